"""`forgetless ui` in a real browser (Debian's chromium driven by Playwright), with the tiny model.

One test walks the pages as a user would: a bad setting shows the CLI's one-line error; a 3-step run
started from the New run page finishes on the Runs page; its files are exactly those of the same run
started from the command line; the Report and compare page shows both runs in its table and the
report; the Chat page answers one prompt with the base model and the adapter, and those answers are
the ones `forgetless chat` gives; the Registry page registers the run and refuses a promotion its gate
fails. The data file is uploaded through the page, and Check data and the planner answer on it.
A screenshot of each page goes to build/test-artifacts/ui/.

Skipped with one line when Playwright or the browser is missing (`.ci/run` installs chromium with apt).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="forgetless[ui] is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from forgetless.deploy.chat import Chat  # noqa: E402
from tests.conftest import tiny_args  # noqa: E402
from tests.ui.browser import CHROMIUM, FLAGS, fill, free_port, pick, wait_for  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "ui"
EVAL = ["eval.before_after=true", "eval.retention=true", "eval.max_examples=2", "eval.max_new_tokens=8"]
EVAL += ["eval.retention_max_prompts=4", "eval.retention_max_new_tokens=8", "eval.samples=1"]
PROMPT = "What is the capital of France?"

pytestmark = [
    pytest.mark.seconds(55),  # the longest files start first (tests/conftest.py)
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser (apt-get install chromium)"),
]


@pytest.fixture
def ui(tmp_path):
    """`forgetless ui` on a free loopback port, as a user starts it; its URL and runs folder."""
    yield from _serving_ui(tmp_path)


def _serving_ui(tmp_path):
    root, port = tmp_path / "runs", free_port()
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgetless", "ui", "--runs", str(root), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url, proc)
    except RuntimeError:
        pytest.fail((tmp_path / "ui.log").read_text())
    try:
        yield url, root
    finally:  # also on close(): a test that drives this generator by hand closes it, and GeneratorExit skips plain code
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def shot(pg, name: str) -> None:
    """A screenshot of the page once no event is in progress (Gradio shows 'processing | 0.4s' meanwhile)."""
    pg.wait_for_function("!document.body.innerText.includes('processing |')")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def files_of(run: Path) -> set[str]:
    """A run's files, relative; TensorBoard's file name holds a time, host and PID: its folder stands for it."""
    return {str(p.relative_to(run).parent if "tensorboard" in p.parts else p.relative_to(run)) for p in run.rglob("*")}


def test_a_run_from_the_page_to_its_report_and_a_chat(ui, page, tiny_dir, train_file, tmp_path):
    url, root = ui
    pg = page
    pg.goto(url)
    pg.wait_for_selector("#start-run")
    fill(pg, "run-name", "from-ui")
    pg.locator("#data-upload input[type=file]").set_input_files(str(train_file))
    fill(pg, "knob-model-name", tiny_dir)
    message = pg.locator("#new-run-message")
    pg.get_by_role("button", name="Check data").click()
    sync_api.expect(message).to_contain_text("rows: 8 read, 8 valid")
    pg.get_by_role("button", name="Plan for this machine").click()
    sync_api.expect(message).to_contain_text("fits")
    sync_api.expect(message).to_contain_text(tiny_dir)
    fill(pg, "knob-train-max_steps", "3")
    fill(pg, "knob-train-lr", "fast")
    pg.click("#start-run")
    sync_api.expect(message).to_contain_text("forgetless: error:")
    sync_api.expect(message).to_contain_text("train.lr")
    assert not (root / "from-ui").exists()

    fill(pg, "knob-train-lr", "")
    pick(pg, "knob-forgetting-preset", "lwf")
    given = ("output_dir=", "model.name=", "data.train=", "train.max_steps=", "forgetting.preset=", "eval.")
    more = [m for m in tiny_args(tiny_dir, train_file, tmp_path) if not m.startswith(given)] + EVAL
    fill(pg, "extra", "\n".join(more))
    shot(pg, "new-run")
    pg.click("#start-run")
    sync_api.expect(message).to_contain_text("started run from-ui")

    pg.get_by_role("tab", name="Runs").click()
    row = pg.locator("#runs-table tr", has_text="from-ui")
    sync_api.expect(row).to_contain_text("finished", timeout=240_000)
    pick(pg, "runs-choice", "from-ui")
    sync_api.expect(pg.locator("#run-detail")).to_contain_text("trained 3 steps")
    shot(pg, "runs")

    # the same run from the command line leaves the same files
    cli = [sys.executable, "-m", "forgetless", "train", "quickstart", f"model.name={tiny_dir}"]
    cli += [f"data.train={train_file}", "train.max_steps=3", "forgetting.preset=lwf", *more]
    cli += [f"output_dir={root / 'from-cli'}"]
    subprocess.run(cli, check=True, capture_output=True, timeout=300)
    assert files_of(root / "from-ui") == files_of(root / "from-cli")

    pg.get_by_role("tab", name="Report and compare").click()
    pick(pg, "report-runs", "from-ui")
    pick(pg, "report-runs", "from-cli")
    pg.click("#report-show")
    table = pg.locator("#compare-table")
    sync_api.expect(table).to_contain_text("from-cli")
    sync_api.expect(table).to_contain_text("lwf")
    report = pg.locator("#report-html")
    sync_api.expect(report).to_contain_text("forgetless report")
    sync_api.expect(report).to_contain_text("run from-ui")
    sync_api.expect(report).to_contain_text("KL to base")
    shot(pg, "compare")

    pg.get_by_role("tab", name="Chat").click()
    pick(pg, "chat-runs", "from-ui")
    fill(pg, "chat-prompt", PROMPT)
    pg.click("#chat-send")
    answers = pg.locator("#fl-answers .fl-answer")
    sync_api.expect(answers).to_have_count(2, timeout=120_000)
    shot(pg, "chat")
    shown = {a.get_attribute("data-model"): a.locator("pre").inner_text() for a in answers.all()}
    expected = Chat(None, [f"from-ui={root / 'from-ui'}"], None, 128)
    for name in ("base", "from-ui"):
        expected.use(name)
        assert shown[name] == expected.answer(PROMPT), name
    registry(pg, root)


def registry(pg, root: Path) -> None:
    """Register the run, see the version listed, and a promotion its gate refuses (MLflow in the runs folder)."""
    if "mlflow" not in sys.modules and importlib.util.find_spec("mlflow") is None:
        return  # the page says how to install it; the registry extra is part of `make test`
    pg.get_by_role("tab", name="Registry").click()
    fill(pg, "registry-uri", f"sqlite:///{root / 'registry.db'}")
    pick(pg, "registry-run", "from-ui")
    fill(pg, "registry-name", "triage")
    pg.get_by_role("button", name="Register").click()
    said = pg.locator("#registry-message")
    sync_api.expect(said).to_contain_text("registered triage version 1", timeout=120_000)
    sync_api.expect(pg.locator("#registry-table")).to_contain_text("triage")
    fill(pg, "registry-version", "1")
    fill(pg, "registry-min-task", "exact_match=0.9")
    pg.get_by_role("button", name="Promote if it passes the gates").click()
    sync_api.expect(said).to_contain_text("refused")
    sync_api.expect(said).to_contain_text("exact_match")
    shot(pg, "registry")


def test_the_runs_page_draws_the_curves_of_the_run_it_preselects(tiny_dir, train_file, tmp_path, page):
    """With runs in the folder, the Runs page opens on one of them, and its detail and curves are there
    when the page is: they came only with the refresh timers (2 s, 5 s) or after another run was picked."""
    import forgetless

    forgetless.train({}, tiny_args(tiny_dir, train_file, tmp_path / "runs" / "earlier", "train.max_steps=2"))
    serving = _serving_ui(tmp_path)
    url, _ = next(serving)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Runs").click()
        sync_api.expect(page.locator("#runs-choice input")).to_have_value("earlier")
        sync_api.expect(page.locator("#run-curves img")).to_be_visible(timeout=3_500)  # the plot's timer: 5 s
        sync_api.expect(page.locator("#run-detail")).to_contain_text("trained 2 steps")
    finally:
        serving.close()
