"""`train.profile_steps`: which steps are profiled, what regions.md says, and the arithmetic of it."""

import json
from types import SimpleNamespace

import forgetless
from forgetless.training.profile import regions, report


def event(key, total_us, self_us, count=1):
    return SimpleNamespace(key=key, cpu_time_total=total_us, self_cpu_time_total=self_us, count=count)


def test_regions_are_per_step_milliseconds_with_the_step_first():
    averages = [
        event("forgetless::loss", 6_000, 100, 4),
        event("forgetless::step", 20_000, 50, 2),
        event("forgetless::backward", 10_000, 200, 4),
        event("aten::mm", 9_000, 9_000, 40),
    ]
    assert regions(averages, steps=2) == {"step": 10.0, "backward": 5.0, "loss": 3.0}
    text = report(averages, steps=2)
    assert "| backward | 5.0 | 50.0% |" in text
    assert "| aten::mm | 4.5 | 45.0% | 20 |" in text  # self time per step, share of the 10 ms step, calls per step


def test_profiled_steps_give_regions_and_a_trace(tiny_overrides, tmp_path):
    online_lwf = ["forgetting.preset=lwf", "forgetting.lwf.teacher=online"]  # auto would cache: several passes
    overrides = [*tiny_overrides, *online_lwf, "train.max_steps=4", "train.profile_steps=2"]
    forgetless.train({}, overrides)
    out = tmp_path / "run" / "profile"
    text = (out / "regions.md").read_text()
    assert text.startswith("# Profile: 2 optimizer step(s), cpu time")
    ms = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1].replace(".", "").isdigit():
            ms[cells[0]] = float(cells[1])
    assert {"step", "loss", "forward", "teacher_forward", "kl", "ce", "backward", "optimizer"} <= set(ms)
    # the parts of a step do not overlap: together they fit inside it; the nested ones inside the loss
    assert ms["loss"] + ms["backward"] + ms["optimizer"] <= ms["step"] * 1.01
    assert ms["forward"] + ms["teacher_forward"] + ms["kl"] + ms["ce"] <= ms["loss"] * 1.01
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    assert sum(e.get("name") == "forgetless::step" for e in events) == 2  # steps 2 and 3, not 1 or 4


def test_no_profile_unless_asked(tiny_overrides, tmp_path):
    forgetless.train({}, [*tiny_overrides, "train.max_steps=2"])
    assert not (tmp_path / "run" / "profile").exists()
