"""Driving `forgetless ui` from Playwright: the browser's flags, a free port, waiting for the server,
and typing into Gradio's widgets. Shared by the browser test and scripts/ui_screenshots.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking flags chromium keeps trying hosts this closed network refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
FLAGS += ["--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until the UI answers; a server that exits first fails at once."""
    end = time.time() + seconds
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"forgetless ui exited with {proc.returncode}") from None
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def fill(pg, elem_id: str, text: str) -> None:
    """Type into a Gradio textbox (a textarea, or an input for one line)."""
    pg.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def pick(pg, elem_id: str, option: str) -> None:
    """Choose an option of a Gradio dropdown (a text input with a listbox): type to filter the list, then
    move the keyboard's highlight to the option itself (the list moves while pages refresh: no mouse).
    A tab's refresh of the choices that lands during the pick can undo it: then it is picked again."""
    box = pg.locator(f"#{elem_id} input")
    for _ in range(3):
        box.click()
        box.fill(option)
        for _ in range(20):
            active = pg.locator(f"#{elem_id} li[role=option].active")  # none yet: the first ArrowDown makes one
            if active.count() and active.first.get_attribute("aria-label") == option:
                break
            pg.keyboard.press("ArrowDown")
            pg.wait_for_timeout(50)
        pg.keyboard.press("Enter")
        pg.keyboard.press("Escape")
        pg.wait_for_timeout(300)
        chips = [t.strip() for t in pg.locator(f"#{elem_id} .token").all_inner_texts()]  # a multiselect's choices
        if option == box.input_value() or option in chips:
            return
    raise AssertionError(f"#{elem_id}: could not pick {option!r} (shows {box.input_value()!r})")
