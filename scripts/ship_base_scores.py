"""Score the embedded base model on the quickstart's eval set once and ship the result as package data
(for both shipped quickstarts: the five-minute one and quickstart-long).

`forgetless train` looks the base side up in the user cache and then in assets/generated/
(eval/base_cache.py), so a fresh install's first quickstart spends no time scoring the base model.
The file is keyed by everything that determines it; when the quickstart's eval set or settings
change, its key changes, the shipped file stops matching, and this script writes the new one.

Run: python scripts/ship_base_scores.py   (about 2-4 minutes on 2 CPU cores)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from forgetless import api
from forgetless.data.build import build
from forgetless.eval import base_cache, suite
from forgetless.recipes import runtime

ASSETS = Path(__file__).resolve().parents[1] / "src" / "forgetless" / "assets" / "generated"


RECIPES = ("quickstart", "quickstart-long")  # their eval settings differ (retention prompts): one file each


def main() -> None:
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in RECIPES:
            cfg = api.load_config(recipe, [f"output_dir={tmp}/run"])
            r = runtime.start(cfg)
            data = build(cfg.data, r.tokenizer, cfg.train.seed)
            # what the sft recipe scores on the base side (eval.before_after is on in both recipes)
            scored, rows = data.validation_examples, data.validation
            key = base_cache.key(cfg, r.model_path, str(r.dtype), r.dev.type, scored, rows)
            name = base_cache.file_name(cfg, key)
            names.append(name)
            if (ASSETS / name).is_file():
                print(f"up to date: {ASSETS / name}")
                continue
            base_cache.reuse(name, lambda: suite.measure(r.model, r.tokenizer, cfg, scored, rows))  # noqa: B023
            shutil.copy(base_cache.lookup(name), ASSETS / name)
            print(f"wrote {ASSETS / name}")
    for old in ASSETS.glob("base-eval-*.json"):
        if old.name not in names:
            old.unlink()  # a stale key can never match again
            print(f"removed {old}")


if __name__ == "__main__":
    main()
