"""The README's pictures of `forgetless ui`: the Report and compare page over the quickstart's presets and
the Chat page with the base model beside the quickstart adapter, on the real embedded model.

Needs the runs it shows (each about 10 minutes on 2 CPU cores):
    forgetless train                                        # runs/quickstart (preset full)
    forgetless train forgetting.preset=none output_dir=runs/quickstart-none   # and lwf, rehearsal alike
Then: python scripts/ui_screenshots.py   (writes docs/images/ui-compare.png and docs/images/ui-chat.png;
needs forgetless[ui], playwright and Debian's chromium)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the browser helpers live with the UI's tests
from tests.ui.browser import CHROMIUM, FLAGS, fill, free_port, pick, wait_for  # noqa: E402

OUT = ROOT / "docs" / "images"
RUNS = ["quickstart-none", "quickstart-lwf", "quickstart-rehearsal", "quickstart"]
TICKET = (
    "Triage this support ticket.\n\n"
    "Hi, my Trail Pro backpack order 48213 arrived with a broken zip. Can I get a refund?"
)


def main() -> None:
    runs = [r for r in RUNS if (ROOT / "runs" / r / "summary.json").is_file()]
    if "quickstart" not in runs or len(runs) < 2:
        sys.exit(f"need runs/quickstart and at least one other preset under runs/ (found {runs}); see the docstring")
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "forgetless", "ui", "--runs", str(ROOT / "runs"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url, ui)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 720})
            pg.set_default_timeout(300_000)
            pg.goto(url)
            OUT.mkdir(parents=True, exist_ok=True)
            pg.get_by_role("tab", name="Report and compare").click()
            for r in runs:
                pick(pg, "report-runs", r)
            pg.click("#report-show")
            expect(pg.locator("#compare-table")).to_contain_text(
                "quickstart-none" if "quickstart-none" in runs else runs[0]
            )
            expect(pg.locator("#report-html")).to_contain_text("runs side by side", timeout=120_000)
            pg.wait_for_timeout(1000)
            pg.screenshot(path=str(OUT / "ui-compare.png"))
            pg.get_by_role("tab", name="Chat").click()
            pick(pg, "chat-runs", "quickstart")
            fill(pg, "chat-prompt", TICKET)
            pg.click("#chat-send")
            expect(pg.locator("#fl-answers .fl-answer")).to_have_count(2, timeout=300_000)
            pg.screenshot(path=str(OUT / "ui-chat.png"), full_page=True)
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    print(f"wrote {OUT / 'ui-compare.png'} and {OUT / 'ui-chat.png'}")


if __name__ == "__main__":
    main()
