"""The UI's run bookkeeping without a browser: status of runs started from the UI and from the CLI,
stop (a checkpoint, then 'stopped'), resume to the end, a refused config shown as 'failed' with the
CLI's one-line error; the New run form's overrides and errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="forgetless[ui] is not installed")

from forgetless import api
from forgetless.errors import UserError
from forgetless.ui import new_run, runs
from tests.conftest import tiny_args


def wait_for(root: Path, name: str, until, timeout: float = 180) -> runs.RunInfo:
    end = time.time() + timeout
    while time.time() < end:
        r = runs.info(root, runs.run_dir(root, name))
        if until(r):
            return r
        time.sleep(0.5)
    raise AssertionError(f"{name}: {r}; log: {runs.log_path(root, name).read_text()[-2000:]}")


def overrides(tiny_dir, train_file, *more):
    args = tiny_args(tiny_dir, train_file, Path("unused"), *more)
    return [a for a in args if not a.startswith("output_dir=")]


def test_stop_then_resume_to_the_end(tiny_dir, train_file, tmp_path):
    root = tmp_path / "runs"
    runs.start(root, "long", "quickstart", overrides(tiny_dir, train_file, "train.max_steps=100000"))
    r = wait_for(root, "long", lambda r: r.status == "running" and r.step >= 3)
    assert r.max_steps == 100000 and r.eta_s is not None and "train" in r.phase
    runs.stop(root, "long")
    r = wait_for(root, "long", lambda r: r.status != "running")
    assert r.status == "stopped", r
    assert json.loads((root / ".ui" / "long.exit").read_text()) == 130
    stopped_at = r.step
    # the UI resumes with the run's own settings (RUN/config.yaml): it trains on from the checkpoint
    runs.resume(root, "long")
    r = wait_for(root, "long", lambda r: r.status == "running" and r.step > stopped_at)
    runs.stop(root, "long")
    r = wait_for(root, "long", lambda r: r.status != "running")
    assert r.status == "stopped" and r.step > stopped_at
    with pytest.raises(UserError, match="not running"):
        runs.stop(root, "long")


def test_a_refused_config_is_a_failed_run_with_the_cli_error(tiny_dir, train_file, tmp_path):
    root = tmp_path / "runs"
    runs.start(root, "bad", "quickstart", overrides(tiny_dir, train_file, "train.lr=fast"))
    r = wait_for(root, "bad", lambda r: r.status != "running" and r.status != "incomplete", timeout=120)
    assert r.status == "failed" and "train.lr" in r.error and "fast" in r.error, r
    assert [x.name for x in runs.scan(root)] == ["bad"]


def test_a_cli_run_is_listed_finished(tiny_dir, train_file, tmp_path):
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "forgetless", "train", *tiny_args(tiny_dir, train_file, root / "cli")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (found,) = runs.scan(root)
    assert (found.name, found.status, found.step, found.max_steps) == ("cli", "finished", 2, 2)
    assert found.summary["steps"] == 2


def test_run_names_stay_under_the_runs_folder(tmp_path):
    for bad in ("", "..", "../x", "a/b", ".hidden"):
        with pytest.raises(UserError, match="run name"):
            runs.run_dir(tmp_path, bad)


def form(**changes) -> dict:
    base = {"recipe": "quickstart", "name": "x", "yaml_path": "", "yaml_upload": None, "data_path": ""}
    base |= {"data_upload": None, "extra": ""}
    base |= {k: "" for k in new_run.TEXT_KNOBS} | {k: new_run.KEEP for k in new_run.CHOICE_KNOBS}
    return base | changes


def test_the_form_becomes_the_cli_overrides(tmp_path, train_file):
    upload = tmp_path / "mine.jsonl"
    upload.write_text(train_file.read_text())
    f = form(**{"data_upload": str(upload), "train.max_steps": "3", "forgetting.preset": "lwf"}, extra="peft.r=4\n")
    config, items = new_run.command(tmp_path, f)
    stored = tmp_path / ".ui" / "uploads" / "x" / "mine.jsonl"
    assert config == "quickstart" and stored.read_text() == train_file.read_text()
    assert items == [f"data.train={stored}", "train.max_steps=3", "forgetting.preset=lwf", "peft.r=4"]
    cfg = new_run.validate(tmp_path, f)
    assert cfg.train.max_steps == 3 and cfg.forgetting.preset == "lwf" and cfg.output_dir == str(tmp_path / "x")


def test_the_form_shows_the_cli_errors(tmp_path):
    said = new_run.start(tmp_path, form(**{"train.lr": "fast"}))
    assert said.startswith("forgetless: error:") and "train.lr" in said
    assert "KEY=VALUE" in new_run.start(tmp_path, form(extra="just words"))
    assert "choose a YAML file" in new_run.start(tmp_path, form(recipe=new_run.YAML_FILE))
    assert not (tmp_path / "x").exists()


def test_an_empty_name_box_gets_a_new_name_and_a_typed_one_is_kept():
    assert new_run.named(form(name=" mine "))["name"] == "mine"
    made = new_run.named(form(name=""))["name"]
    assert re.fullmatch(r"run-\d{8}-\d{6}", made)


def test_every_knob_is_a_config_key_with_help():
    for key in (*new_run.TEXT_KNOBS, *new_run.CHOICE_KNOBS):
        assert new_run.help_text(key), key


def test_the_new_run_page_offers_grpo_and_its_form_validates_as_a_grpo_run(tmp_path):
    """The recipe dropdown lists every shipped recipe, GRPO's included; the form's GRPO choice becomes a
    config whose recipe is grpo with the shipped rewards, and preset lwf (refused for GRPO) is one error."""
    assert "grpo" in api.shipped_configs()
    cfg = new_run.validate(tmp_path, form(recipe="grpo", **{"train.max_steps": "2"}))
    assert cfg.recipe == "grpo" and cfg.train.max_steps == 2
    assert [s.kind for s in cfg.grpo.rewards] == ["numeric", "length"]
    said = new_run.start(tmp_path, form(recipe="grpo", **{"forgetting.preset": "lwf"}))
    assert said.startswith("forgetless: error:") and "lwf" in said
    assert not (tmp_path / "x").exists()
