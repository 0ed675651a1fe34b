"""The forgetting budget: the controller (pure), the refusals, and the loop and dial on the tiny model."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest

import forgetless
from forgetless.errors import UserError
from forgetless.eval import budget
from forgetless.objectives.forgetting import Controller, Weights
from forgetless.recipes import compare
from tests.conftest import write_jsonl


def test_the_controller_raises_the_weight_above_the_budget_and_lowers_it_below():
    c = Controller(target=0.05, weight=1.0, horizon=10)
    assert c.update(0.10, 5) == pytest.approx(math.exp(math.log(2) * 0.5))  # twice the budget: ×2^(5/10)
    c = Controller(target=0.05, weight=1.0, horizon=10, engaged=True)
    assert c.update(0.025, 5) == pytest.approx(math.exp(-math.log(2) * 0.5))  # half: the mirror image
    c = Controller(target=0.05, weight=1.0, horizon=10)
    assert c.update(5.0, 10) == pytest.approx(math.e)  # a KL 100× over moves it by at most e per horizon
    assert c.update(0.05, 10) == pytest.approx(math.e)  # on the budget: unchanged
    c = Controller(target=0.05, weight=1.0, horizon=1, high=3.0, low=0.5)
    assert c.update(1.0, 10) == 3.0 and c.update(0.0, 10) == 0.5  # bounded both ways (a KL of 0 too)


def test_the_controller_holds_the_weight_until_the_kl_first_reaches_the_budget():
    """Early in training the KL is small because little has been learned, not because there is room."""
    c = Controller(target=0.05, weight=1.0, horizon=10)
    assert c.update(0.001, 5) == 1.0 and c.update(0.049, 5) == 1.0 and not c.engaged
    assert c.update(0.05, 5) == 1.0 and c.engaged  # reached: engaged, and on the budget nothing moves yet
    assert c.update(0.025, 5) == pytest.approx(math.exp(-math.log(2) * 0.5))  # from now on it lowers too


def test_with_lookahead_a_kl_over_the_budget_but_falling_fast_stops_raising_the_weight():
    c = Controller(target=0.05, weight=1.0, horizon=10, lookahead=1.0)
    assert c.update(0.10, 5) == pytest.approx(2**0.5)  # no trend yet: as the proportional controller
    assert c.update(0.075, 5) == pytest.approx(2**0.5)  # 0.075 falling by 0.025 a probe: 0.05 next, hold
    w = c.update(0.06, 5)  # 0.06 − 0.015 = 0.045 expected: lowered although still over the budget
    assert w == pytest.approx(2**0.5 * math.exp(math.log(0.045 / 0.05) * 0.5))
    c = Controller(target=0.05, weight=1.0, horizon=10, lookahead=1.0, last=0.2, engaged=True)
    assert c.update(0.04, 5) == pytest.approx(math.exp(-0.5))  # expected floored at 0.04/4, the error clipped at −1
    plain = Controller(target=0.05, weight=1.0, horizon=10)
    plain.update(0.10, 5)
    assert plain.update(0.075, 5) > 2**0.5  # without it the weight keeps rising while the KL falls


def test_with_hold_a_kl_over_the_budget_and_falling_holds_the_weight_and_under_it_lowers_it():
    c = Controller(target=0.05, weight=1.0, horizon=10, hold=True)
    assert c.update(0.10, 5) == pytest.approx(2**0.5)  # over the budget, no earlier probe: raised
    assert c.update(0.12, 5) == pytest.approx(2**0.5 * math.exp(math.log(2.4) * 0.5))  # over and rising: raised
    held = c.weight
    assert c.update(0.08, 5) == held and c.update(0.06, 5) == held  # over but coming back: held
    assert c.update(0.07, 5) == pytest.approx(held * math.exp(math.log(1.4) * 0.5))  # rising again: raised
    c = Controller(target=0.05, weight=2.0, horizon=10, hold=True, engaged=True, last=0.1)
    assert c.update(0.025, 5) == pytest.approx(2.0 * math.exp(-math.log(2) * 0.5))  # under and falling: lowered


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["forgetting.preset=none", "forgetting.budget.kl=0.05"], "forgetting.budget: preset 'none' has no LwF or"),
        (["recipe=dpo", "forgetting.budget.kl=0.05"], "forgetting.budget is steered by recipe sft"),
        (["forgetting.budget.kl=0.05", "eval.retention=false"], "it needs eval.retention=true$"),
        (["forgetting.budget.mc_drop=0.02", "eval.benchmarks=[]"], "needs eval.retention=true and eval.benchmarks"),
    ],
)
def test_a_budget_with_nothing_to_steer_or_measure_is_refused_in_one_line(overrides, message):
    with pytest.raises(UserError, match=message) as caught:
        forgetless.load_config({}, overrides)
    assert "\n" not in str(caught.value)


def test_the_steered_weight_is_lwf_else_the_rehearsal_ce():
    cfg = forgetless.load_config({}, ["forgetting.budget.kl=0.05"])
    assert cfg.forgetting.steered == "lwf"
    cfg = forgetless.load_config({}, ["forgetting.preset=rehearsal", "forgetting.budget.kl=0.05"])
    assert cfg.forgetting.steered == "rehearsal"
    cfg = forgetless.load_config({}, ["forgetting.budget.mc_drop=0.05"])
    assert cfg.forgetting.steered is None  # checked after training only: nothing to hold during it


def test_under_a_kl_budget_the_lwf_kl_defaults_to_the_general_rows_and_a_written_choice_is_kept():
    def tokens(*overrides: str) -> list[str]:
        return forgetless.load_config({}, list(overrides)).forgetting.kl_tokens

    assert tokens() == ["context", "rehearsal"]
    assert tokens("forgetting.budget.kl=0.05") == ["rehearsal"]
    assert tokens("forgetting.budget.mc_drop=0.05") == ["context", "rehearsal"]  # held after training only
    assert tokens("forgetting.budget.kl=0.05", "forgetting.lwf.tokens=[context,rehearsal]") == ["context", "rehearsal"]
    # compare's preset variants drop the budget from the same config: their KL goes back where it was
    cfg = forgetless.load_config({}, ["forgetting.budget.kl=0.05"])
    full = compare.variant_config(cfg, "full", compare.preset_variants(["full"])["full"])
    assert full.forgetting.kl_tokens == ["context", "rehearsal"]
    assert compare.effective(cfg.model_dump(mode="json"))["forgetting"]["lwf"]["tokens"] == ["rehearsal"]


def test_within_and_the_mc_drop_read_from_both_sides():
    cfg = forgetless.load_config({}, ["forgetting.budget.kl=0.05", "forgetting.budget.mc_drop=0.02"])
    before = {"benchmarks": {"a": {"acc": 0.60}, "b": {"acc": 0.50}}}
    after = {"prompts": {"kl_per_token": 0.04}, "benchmarks": {"a": {"acc": 0.59}, "b": {"acc": 0.47}}}
    found = budget.numbers(before, after)
    assert found["kl"] == 0.04 and found["mc_drop"] == pytest.approx(0.03)  # the largest drop counts
    assert not budget.within(cfg, found)
    assert budget.within(cfg, {"kl": 0.04, "mc_drop": 0.01})
    assert not budget.within(cfg, {"kl": None, "mc_drop": 0.0})  # an unmeasured bound is never met


def _budget_run(tiny_overrides, tmp_path, kl: float, name: str, *extra: str) -> tuple[dict, list[dict]]:
    prompts = [{"instruction": f"Name a colour, {w}."} for w in ("please", "now", "quickly", "kindly")]
    summary = forgetless.train(
        {},
        [
            *tiny_overrides,
            f"output_dir={tmp_path / name}",
            "forgetting.preset=lwf",
            "eval.retention=true",
            f"eval.retention_prompts={write_jsonl(tmp_path / 'prompts.jsonl', prompts)}",
            "eval.retention_max_new_tokens=6",
            "eval.benchmarks=[]",
            f"forgetting.budget.kl={kl}",
            "forgetting.budget.every=2",
            "forgetting.budget.probe_prompts=2",
            *extra,
        ],
    )
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in rows if budget.PROBE_KL in r]


def test_the_controller_moves_lwf_on_the_tiny_model_and_the_dial_saves_the_closest_point(tiny_overrides, tmp_path):
    """A budget far below what the run drifts: every probe raises λ, and the trained adapter is dialled down
    (to the smallest scale, 1/32, when even that is over); a budget far above: every probe lowers λ."""
    # without hold (the default), which keeps λ while a KL over the budget falls: every probe raises it
    tight, probes = _budget_run(tiny_overrides, tmp_path, 1e-9, "tight", "forgetting.budget.hold=false")
    weights = [p["lwf_weight"] for p in probes]
    assert [p["step"] for p in probes] == [2, 4, 6] and all(p[budget.PROBE_KL] > 1e-9 for p in probes)
    assert weights[0] > 0.5 and all(b > a for a, b in pairwise(weights))
    verdict = tight["budget"]
    assert not verdict["met"] and verdict["scale"] == pytest.approx(1 / 32)
    assert verdict["measured"]["kl"] < verdict["trained"]["kl"]  # scaled down, the drift shrank
    adapter = json.loads((tmp_path / "tight" / "adapter" / "adapter_config.json").read_text())
    record = json.loads((tmp_path / "tight" / "tune_scale.json").read_text())
    assert adapter["lora_alpha"] == pytest.approx(record["trained"]["lora_alpha"] / 32)
    assert record["by"] == "forgetting.budget" and len(record["points"]) == budget.BISECTIONS
    report = (tmp_path / "tight" / "report.md").read_text()
    assert "budget not met: kl " in report and "adapter scaled to 0.031" in report

    loose, probes = _budget_run(tiny_overrides, tmp_path, 1e3, "loose")  # never reached: λ stays as set
    assert [p["lwf_weight"] for p in probes] == [0.5] * 3 and all(p[budget.PROBE_KL] < 1e3 for p in probes)
    assert loose["budget"]["met"] and loose["budget"]["scale"] is None
    assert not (tmp_path / "loose" / "tune_scale.json").exists()
    assert "budget met: kl " in (tmp_path / "loose" / "report.md").read_text()


def test_a_resumed_run_takes_the_controllers_weight_back(tmp_path, monkeypatch):
    """The weight at the checkpoint the run resumes from, and whether the budget was reached by then (the
    controller lowers it from then on); a probe logged after that checkpoint is of the lost future."""
    cfg = forgetless.load_config({}, ["forgetting.budget.kl=0.05", "forgetting.budget.every=1"])
    for reached, kl in ((True, 0.1), (False, 0.01)):
        run = tmp_path / f"run-{kl}"
        (run / "checkpoints" / "step-5").mkdir(parents=True)
        lost = {"step": 6, budget.PROBE_KL: 0.2, "lwf_weight": 9.0}  # logged, then the run stopped before step 10
        log = write_jsonl(run / "metrics.jsonl", [{"step": 5, budget.PROBE_KL: kl, "lwf_weight": 2.5}, lost])
        weights = Weights.of(cfg.forgetting)
        adjust = budget.probe(cfg, None, ["ref"], weights, log)
        assert adjust is not None and weights.lwf == 2.5
        monkeypatch.setattr(budget, "kl_to_base", lambda *a, **k: 0.025)  # the next probe: under the budget
        adjust(None, 6)
        assert (weights.lwf < 2.5) is reached


def test_a_resumed_run_takes_the_last_probe_back_for_the_lookahead(tmp_path, monkeypatch):
    """With lookahead 1 the next probe's error is read at the trend from the last logged probe: 0.10 then
    0.06 carries forward to 0.02, under the budget of 0.05, so the weight falls (without the logged probe
    0.06 alone is over it and the weight would rise)."""
    cfg = forgetless.load_config({}, ["forgetting.budget.kl=0.05", "forgetting.budget.every=1",
                                      "forgetting.budget.lookahead=1"])  # fmt: skip
    (tmp_path / "checkpoints" / "step-5").mkdir(parents=True)
    log = write_jsonl(tmp_path / "metrics.jsonl", [{"step": 5, budget.PROBE_KL: 0.1, "lwf_weight": 2.0}])
    weights = Weights.of(cfg.forgetting)
    adjust = budget.probe(cfg, None, ["ref"], weights, log)
    monkeypatch.setattr(budget, "kl_to_base", lambda *a, **k: 0.06)
    adjust(None, 6)
    assert weights.lwf < 2.0
