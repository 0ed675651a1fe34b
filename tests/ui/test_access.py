"""Who may use `forgetless ui`: no login on loopback; another host only with an API key, which the
browser must then give (the serve command's rule)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("gradio", reason="forgetless[ui] is not installed")

from forgetless.errors import UserError
from forgetless.ui import app
from tests.ui.browser import free_port, wait_for


def test_another_host_needs_a_key(monkeypatch):
    monkeypatch.delenv("FORGETLESS_API_KEY", raising=False)
    assert app.check_access("127.0.0.1", None) is None
    with pytest.raises(UserError, match="--api-key"):
        app.check_access("0.0.0.0", None)
    assert app.check_access("0.0.0.0", "k") == "k"
    monkeypatch.setenv("FORGETLESS_API_KEY", "env-key")
    assert app.check_access("0.0.0.0", None) == "env-key"


def test_cli_refuses_an_open_host_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("FORGETLESS_API_KEY", raising=False)
    cmd = [sys.executable, "-m", "forgetless", "ui", "--runs", str(tmp_path), "--host", "0.0.0.0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "set --api-key" in out.stderr


def status(url: str, data: dict | None = None, cookie: str = "") -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data else None
    req = urllib.request.Request(url, data=body, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, "; ".join(v.split(";")[0] for k, v in r.headers.items() if k.lower() == "set-cookie")
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_with_a_key_the_page_asks_for_it(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "forgetless", "ui", "--runs", str(tmp_path), "--port", str(port), "--api-key", "s3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/", proc)
        assert status(base + "/config")[0] == 401
        assert status(base + "/login", {"username": "me", "password": "wrong"})[0] == 400
        code, cookie = status(base + "/login", {"username": "me", "password": "s3"})
        assert code == 200 and cookie
        assert status(base + "/config", cookie=cookie)[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
