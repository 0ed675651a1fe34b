"""Pinned trajectories: 5 steps of the shipped quickstart recipes (LoRA, preset full: LwF + rehearsal,
packing) on the tiny model, every logged loss pinned, so that a silent numeric change (a normalisation,
a mask, the data order, the schedule) fails here even when every unit test still passes.

quickstart-long's values were produced by the code before the layout change and reproduced by the code
after it (identical to 6 decimals), when it was the quickstart; the five-minute quickstart's (lr 3e-3
constant, the KL on a random quarter of its positions, λ 0.5 as before) were produced when it was
introduced.
Re-pinned on 2026-12-07 when LoRA's dropout began sharing one mask per shared input (q/k/v, gate/up)
and drawing it from a PCG64 stream (adapters/dropout.py): the masks changed, so did every grad norm
(the losses of steps 1-2 did not: no adapter has moved yet). Row-by-row attention on CPU
(model/packed_attention.py), the same day, reproduces these values within the tolerances.
Tolerances allow for float differences between CPUs (AVX2 vs AVX-512). If a change is meant to move
these numbers, say so in its commit and re-pin.
"""

from __future__ import annotations

import json

import pytest

import forgetless
from tests.conftest import write_jsonl

PINNED_LONG = [  # (loss, ce, lwf, grad_norm) per optimizer step
    (12.014545, 12.014545, 0.0, 2.646630),
    (12.574804, 12.574804, 0.0, 2.669845),
    (12.126611, 12.126486, 0.000126, 2.602092),
    (12.083309, 12.082884, 0.000425, 2.779629),
    (12.313580, 12.312943, 0.000637, 2.667398),
]


PINNED_QUICKSTART = [  # steps 1-2 equal quickstart-long's: warm-up starts at lr 0, so the adapter first moves in step 2
    (12.014545, 12.014545, 0.0, 2.646630),
    (12.574804, 12.574804, 0.0, 2.669845),
    (12.061935, 12.061193, 0.000742, 2.578364),
    (11.953254, 11.948494, 0.004761, 2.806776),
    (12.101362, 12.091898, 0.009464, 2.621897),
]


@pytest.mark.parametrize(("recipe", "pinned"), [("quickstart-long", PINNED_LONG), ("quickstart", PINNED_QUICKSTART)])
def test_quickstart_recipe_trajectory_is_pinned(tiny_dir, tmp_path, recipe, pinned):
    general = write_jsonl(
        tmp_path / "general.jsonl",
        [{"instruction": f"Name a colour, number {i}.", "output": f"Colour {i}: blue."} for i in range(8)],
    )
    out = tmp_path / "run"
    forgetless.train(
        recipe,
        [
            f"model.name={tiny_dir}",
            f"output_dir={out}",
            "train.max_steps=5",
            "train.eval_every=100",
            "train.save_every=100",
            f"forgetting.rehearsal.source={general}",
            "eval.before_after=false",
            "eval.retention=false",
            "eval.benchmarks=[]",
            "eval.report=false",
            "eval.probe_prompts=0",
        ],
    )
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [(x["loss"], x["ce"], x["lwf"], x["grad_norm"]) for x in lines if "loss" in x]
    assert len(steps) == len(pinned)
    for got, want in zip(steps, pinned, strict=True):
        assert got[0] == pytest.approx(want[0], rel=1e-4) and got[1] == pytest.approx(want[1], rel=1e-4)
        assert got[2] == pytest.approx(want[2], abs=2e-6) and got[3] == pytest.approx(want[3], rel=1e-3)
