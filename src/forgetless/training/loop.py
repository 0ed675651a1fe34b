"""The one training loop: every recipe (SFT, DPO, reward model, PPO) trains through `fit`.

A recipe hands in the model, a batch stream (`Batches`, or PPO's rollouts) and an `Objective`
(objectives/objective.py): its loss function and the units the loss terms are normalised by. The
loop owns accumulation, clipping, the finite check, the optimizer and schedule steps, validation,
atomic checkpoints, exact resume, the out-of-memory fallback and logging; `_one_step` shows one
optimizer step in that order. It runs on accelerate so that the same code runs under
`accelerate launch` / `torchrun`.

With N processes every process walks the same seeded data stream; an optimizer step takes the
next `grad_accum × N` micro-batches and process r trains on every N-th of them, starting at r.
So each row is seen once per epoch across processes, the effective batch is
`batch_size × grad_accum × N`, and N processes compute the same update as one process with
N times the accumulation.
"""

from __future__ import annotations

import math
import resource
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from forgetless.config.schema import TrainConfig
from forgetless.data.batching import Batches
from forgetless.errors import TrainingDiverged
from forgetless.objectives.objective import CountFn, LossFn, Objective
from forgetless.training.bookkeeping import AdjustFn, Bookkeeping, EvalFn
from forgetless.training.bookkeeping import resume as resume_state
from forgetless.training.checkpoint import Progress
from forgetless.training.metrics_log import MetricsLog
from forgetless.training.monitor import UNCHANGED, Monitor
from forgetless.training.oom import Oom
from forgetless.training.optim import make_optimizer, make_scheduler, total_steps
from forgetless.training.profile import StepProfiler, region


def next_window(batches: Batches, prog: Progress, size: int) -> list[dict]:
    """The micro-batches of the next optimizer step (all processes'); an epoch's last may be shorter."""
    window = list(islice(batches.epoch(prog.epoch, prog.micro), size))
    if not window:
        prog.epoch, prog.micro = prog.epoch + 1, 0
        window = list(islice(batches.epoch(prog.epoch, 0), size))
    return window


def shard(window: list, rank: int, processes: int) -> tuple[list, float]:
    """This process's micro-batches of a step's window, and the weight of its loss (1, or 0).

    When an epoch's last window holds fewer micro-batches than processes, a process without one
    still runs a forward/backward (DDP waits for every process's gradients), on the window's first
    micro-batch with its loss multiplied by 0.
    """
    mine = window[rank::processes]
    return (mine, 1.0) if mine else (window[:1], 0.0)


def parts(window: list) -> list[dict]:
    """A micro-batch is one padded batch, or a list of them that form one unit of data (task rows and
    rehearsal rows, padded separately so that short task rows are not padded to long general rows)."""
    return [p for item in window for p in (item if isinstance(item, list) else [item])]


def step_counts(window: list, count_fn: CountFn) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for b in parts(window):
        for unit, n in count_fn(b).items():
            counts[unit] += n
    return dict(counts)


def split_rows(batch: dict[str, torch.Tensor], chunks: int) -> list[dict[str, torch.Tensor]]:
    """A micro-batch as `chunks` smaller ones (row slices): the out-of-memory fallback's smaller batch.
    The loss terms are sums over positions normalised by step-wide counts, so the update is unchanged."""
    k = min(chunks, batch["input_ids"].shape[0])
    if k == 1:
        return [batch]
    cut = {name: torch.tensor_split(t, k) for name, t in batch.items()}
    return [{name: cut[name][i] for name in batch} for i in range(k)]


def train_step(model, window, loss_fn: LossFn, acc: Accelerator, counts: dict[str, int], chunks: int = 1):
    """Forward/backward over one step's window (all processes'); returns the step's loss terms and
    metrics, each a mean over its unit across the whole window (`counts`: the window's `step_counts`)."""
    # Every process holds the whole window, so the step-wide counts need no communication.
    # DDP averages gradients over processes, so each process normalises by 1/N of the total.
    norms = {unit: max(t, 1) / acc.num_processes for unit, t in counts.items()}
    mine, weight = shard(window, acc.process_index, acc.num_processes)
    terms: dict[str, float] = defaultdict(float)
    metrics: dict[str, float] = defaultdict(float)
    pieces = [c for piece in parts(mine) for c in split_rows(piece, chunks)]
    for i, batch in enumerate(pieces):
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        # Gradients are all-reduced once per step: after the last piece's backward.
        last = i == len(pieces) - 1
        sync = nullcontext() if last else acc.no_sync(model)
        if acc.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed steps its optimizer inside backward unless told that this is not the
            # accumulation boundary; accelerate reads that flag from its gradient state.
            acc.gradient_state._set_sync_gradients(last)
        with sync, acc.autocast():
            with region("loss"):
                out = loss_fn(model, batch, norms)
            found, seen = out if isinstance(out, tuple) else (out, {})
            losses = {name: value * weight for name, value in found.items()}
            with region("backward"):
                acc.backward(sum(losses.values()))
        for name, value in losses.items():
            terms[name] += value.detach().float().item()
        for name, value in seen.items():
            metrics[name] += float(value) * weight
    if acc.num_processes == 1:
        return dict(terms), dict(metrics)
    # Each process's sums hold 1/N of the step: the mean over processes is the step-wide value.
    names = [*terms, *metrics]
    reduced = acc.reduce(torch.tensor([*terms.values(), *metrics.values()], device=acc.device), "mean").tolist()
    values = dict(zip(names, reduced, strict=True))
    return {k: values[k] for k in terms}, {k: values[k] for k in metrics}


# one piece: the loop itself; each step inside is one call, and its `finally` closes the profiler, bar and log
def fit(
    model,
    batches: Batches,
    objective: Objective,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = False,
    mixed_precision: str = "no",
    monitor: Monitor | None = None,
    on_best: Callable[[torch.nn.Module], None] | None = None,
    last_validation: bool = True,
    adjust: AdjustFn | None = None,
) -> dict:
    """Train `model` on `batches` for the configured steps; returns the run's training facts.
    last_validation=False: the caller's final evaluation measures the finished model's validation
    numbers anyway (`monitor.final_validation` logs them), so the last step does not compute them twice.
    `adjust(model, step)`: called after every optimizer step (eval mode, no gradient), may move the
    objective's weights (a forgetting budget's controller) and returns what it logs, or None."""
    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    steps = total_steps(cfg, batches, acc.num_processes)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    model, optimizer = acc.prepare(model, optimizer)
    effective = cfg.batch_size * cfg.grad_accum * acc.num_processes
    acc.print(
        f"[forgetless] effective batch {effective} = batch_size {cfg.batch_size} × grad_accum {cfg.grad_accum} "
        f"× {acc.num_processes} process(es); {steps} optimizer steps"
    )
    prog = Progress(planned=steps)
    if resume:
        prog = resume_state(out_dir, acc.unwrap_model(model), optimizer, scheduler, steps)
    log = MetricsLog(out_dir, enabled=acc.is_main_process, resume_step=prog.step)
    if monitor is not None and resume:
        monitor.replay(log.path)
    run = Bookkeeping(
        acc, cfg, steps, out_dir, log, evaluate, monitor, on_best, optimizer, scheduler, last_validation, adjust
    )
    model.train()
    bar = tqdm(total=steps, initial=prog.step, disable=not acc.is_main_process, desc="train", unit="step")
    oom = Oom(cfg.on_oom == "retry" and acc.num_processes == 1)
    profiler = StepProfiler(cfg.profile_steps, out_dir, acc.is_main_process, first=prog.step + 1)
    last: dict[str, float] = {}
    try:
        while prog.step < steps and not run.stopped:
            with profiler.step(prog.step + 1):
                last = _one_step(model, batches, objective, optimizer, scheduler, acc, cfg, prog, oom)
            bar.update(1)
            bar.set_postfix(_postfix(last))
            run.after_step(model, prog, last)
    except KeyboardInterrupt:
        run.interrupted(model, prog)
        raise
    finally:
        profiler.close()
        bar.close()
        log.close()
    facts = _facts(prog, batches, last, effective, acc, run.stopped, monitor)
    if facts["adapter_unchanged"]:
        acc.print(f"[forgetless] warning: {UNCHANGED}")
    return facts


def _facts(prog: Progress, batches, last: dict, effective: int, acc, stopped, monitor) -> dict:
    """What the loop reports about the run (the recipe adds its own and writes summary.json)."""
    return {
        "steps": prog.step,
        "epochs_completed": prog.epoch + prog.micro / max(len(batches), 1),
        "tokens": prog.tokens,
        "target_tokens": prog.targets,
        "train_seconds": round(prog.elapsed, 2),
        "tokens_per_s": round(prog.tokens / max(prog.elapsed, 1e-9), 1),
        "final": last,
        "effective_batch": effective,
        "processes": acc.num_processes,
        "stopped_early": stopped,
        "peak_memory_gb": peak_memory_gb(acc.device),
        "best_step": monitor.best_step if monitor is not None else None,
        "best_val_loss": monitor.best_val if monitor is not None and monitor.val else None,
        # every step at learning rate 0 (all inside the warm-up): the result is its initialisation
        "adapter_unchanged": prog.step > 0 and prog.max_lr == 0.0,
    }


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: the most memory tensors held on the GPU; CPU: the process's peak resident memory so far."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # Linux reports KiB


def _one_step(model, batches, objective: Objective, optimizer, scheduler, acc, cfg, prog: Progress, oom: Oom) -> dict:
    """One optimizer step: accumulate over the window -> clip -> finite check -> step -> schedule -> zero."""
    t0 = time.perf_counter()
    window = next_window(batches, prog, cfg.grad_accum * acc.num_processes)
    counts = step_counts(window, objective.count)
    rows = max(p["input_ids"].shape[0] for p in parts(window))
    while True:  # once, unless a step runs out of memory and train.on_oom=retry steps down (oom.py)
        try:
            terms, metrics = train_step(model, window, objective.loss, acc, counts, oom.chunks)
            break
        except torch.OutOfMemoryError as e:
            oom.recover(e, model, rows, optimizer, acc.print)
    loss = sum(terms.values())
    grad_norm = float(acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm))
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(
            f"loss became {loss} (grad norm {grad_norm}) at step {prog.step + 1}; the last good checkpoint in "
            "output_dir/checkpoints is intact. Lower train.lr, or check the data for broken rows."
        )
    lr = scheduler.get_last_lr()[0]
    with _uninterrupted(), region("optimizer"):  # weights, optimizer, schedule and progress: all or nothing
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        prog.step += 1
        prog.micro += len(window)
        if prog.micro >= len(batches):
            prog.epoch, prog.micro = prog.epoch + 1, 0
        prog.tokens += sum(int(b["attention_mask"].sum()) for b in parts(window))
        prog.targets += counts.get("targets", 0)
        prog.elapsed += time.perf_counter() - t0
        prog.max_lr = max(prog.max_lr, lr)
    return {
        "loss": loss,
        **(terms if len(terms) > 1 else {}),
        **metrics,
        "lr": lr,
        "grad_norm": grad_norm,
        "epoch": prog.epoch + prog.micro / len(batches),
        "tokens_per_s": prog.tokens / max(prog.elapsed, 1e-9),
        "tokens": prog.tokens,
    }


@contextmanager
def _uninterrupted():
    """Hold Ctrl-C (SIGINT) until the block is done, then raise it: an interrupt never leaves the
    weights updated and the progress counter not (the checkpoint saved on interrupt must be exact)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield  # ignored SIGINT (a job started with `&` by a script): holding it would turn it back on
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:  # None: the old handler was set outside Python; the default is the closest to it
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def _postfix(last: dict) -> dict[str, str]:
    """Progress bar: the total loss, each loss term when there are several, lr and speed."""
    terms = [k for k in last if k not in ("loss", "lr", "grad_norm", "epoch", "tokens_per_s", "tokens")]
    out = {"loss": f"{last['loss']:.4f}", **{k: f"{last[k]:.4f}" for k in terms}}
    return out | {"lr": f"{last['lr']:.2e}", "tok_s": f"{last['tokens_per_s']:.0f}"}
