"""`train.profile_steps`: where an optimizer step's time goes, from torch.profiler.

The loop labels its parts with `region(...)` (torch's `record_function`: near-free when no profiler
runs): the student's forward, the loss terms, the teacher's forward, backward and the optimizer.
With `profile_steps: N` the N optimizer steps after the first (which warms up the allocator and the
kernels) run under torch.profiler, and the run directory gets

  profile/regions.md   each region's time per step and its share of the step, then the operators
                       with the most time of their own (self time); regions.json: the regions alone
  profile/trace.json   the whole timeline, for https://ui.perfetto.dev or chrome://tracing
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from forgetless import files

PREFIX = "forgetless::"
STEP = PREFIX + "step"


def region(name: str):
    """A labelled part of a step (a context manager); shows up in regions.md and the trace."""
    return record_function(PREFIX + name)


class StepProfiler:
    """Profiles optimizer steps first+1 .. first+n (1-based) of this process; writes on `close`."""

    def __init__(self, n: int, out_dir: Path, enabled: bool, first: int = 1):
        self.steps = set(range(first + 1, first + 1 + n)) if enabled else set()
        self.out = out_dir / "profile"
        self.prof: profile | None = None
        self.done = 0

    @contextmanager
    def step(self, number: int):
        """Wraps optimizer step `number` (1-based): profiled when it is one of the chosen steps."""
        if number not in self.steps:
            yield
            return
        if self.prof is None:
            cuda = [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
            self.prof = profile(activities=[ProfilerActivity.CPU, *cuda])
            self.prof.__enter__()
        with record_function(STEP):
            yield
        self.done += 1
        if number == max(self.steps):  # stop at once: the rest of the run runs unprofiled
            self.close()

    def close(self) -> None:
        """Write the files (also after an interrupted or short run: whatever steps were profiled)."""
        if self.prof is None:
            return
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        if not self.done:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out / "trace.json"))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        averages = prof.key_averages()
        files.write_text(self.out / "regions.md", report(averages, self.done, device))
        found = {"steps": self.done, "device": device, "ms_per_step": regions(averages, self.done, device)}
        files.write_json(self.out / "regions.json", found, indent=1)
        print(f"[forgetless] profile of {self.done} step(s): {self.out / 'regions.md'} (timeline: trace.json)")


def _ms(event, device: str) -> tuple[float, float]:
    """(total, self) milliseconds of an averaged event on the device that did the work. On a GPU an
    event with no kernel time of its own (host-side work) counts its CPU time: kernels run
    asynchronously, so the CPU time of a kernel launch says nothing of the kernel."""
    if device == "cuda" and event.device_time_total > 0:
        return event.device_time_total / 1e3, event.self_device_time_total / 1e3
    return event.cpu_time_total / 1e3, event.self_cpu_time_total / 1e3


def regions(averages, steps: int, device: str = "cpu") -> dict[str, float]:
    """Milliseconds per step of each labelled region (inclusive of what runs inside it), `step` first."""
    found = {e.key[len(PREFIX) :]: _ms(e, device)[0] / steps for e in averages if e.key.startswith(PREFIX)}
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "step", -kv[1])))


def report(averages, steps: int, device: str = "cpu", top: int = 15) -> str:
    """regions.md: the labelled regions, then the operators with the most self time."""
    found = regions(averages, steps, device)
    step = found.get("step") or 1.0
    lines = [
        f"# Profile: {steps} optimizer step(s), {device} time, ms per step",
        "",
        "Regions nest (the teacher's forward and the KL run inside `loss`; `step` holds everything).",
        "",
        "| region | ms / step | share of step |",
        "|---|---|---|",
        *(f"| {name} | {ms:.1f} | {ms / step:.1%} |" for name, ms in found.items()),
        "",
        "| operator (self time) | ms / step | share of step | calls / step |",
        "|---|---|---|---|",
    ]
    ops = sorted((e for e in averages if not e.key.startswith(PREFIX)), key=lambda e: -_ms(e, device)[1])
    for e in ops[:top]:
        ms = _ms(e, device)[1] / steps
        lines.append(f"| {e.key} | {ms:.1f} | {ms / step:.1%} | {e.count / steps:.0f} |")
    return "\n".join(lines) + "\n"
