"""Watches each validation for overfitting and for a blown forgetting budget.

Overfitting: validation loss rose at `patience` validations in a row while the training loss
(mean over the steps since the previous validation) fell. It always warns; with
train.early_stopping.enabled it stops the run, and the recipe restores the best adapter.
A KL alarm: the retention probe's KL to base per token above eval.max_kl warns, or
stops the run with eval.on_max_kl=stop.
The history comes back from metrics.jsonl on resume, so patience survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from forgetless import files
from forgetless.training.metrics_log import MetricsLog

UNCHANGED = (
    "every step ran at learning rate 0 (all of them inside the warm-up of train.warmup_ratio): the adapter is "
    "its initialisation and the model did not change; raise train.max_steps or lower train.warmup_ratio"
)


def task_loss(row: dict) -> float:
    """A logged step's task loss (`ce`), not the forgetting terms `loss` adds: the overfitting check
    compares it with the task's validation loss, live and when the history is rebuilt on resume."""
    return row.get("ce", row["loss"])


@dataclass
class Monitor:
    patience: int = 3
    stop_on_overfit: bool = False
    max_kl: float | None = None
    stop_on_kl: bool = False
    val: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    best_val: float = float("inf")
    best_step: int = 0
    _since: list[float] = field(default_factory=list)

    def train_loss(self, loss: float) -> None:
        self._since.append(loss)

    def update(self, step: int, result: dict) -> tuple[bool, str | None]:
        """(this validation is the best so far, reason to stop or None); prints warnings."""
        improved, stop = False, None
        if self._since:
            self.train.append(sum(self._since) / len(self._since))
            self._since = []
        if "val_loss" in result:
            self.val.append(result["val_loss"])
            if result["val_loss"] < self.best_val:
                self.best_val, self.best_step, improved = result["val_loss"], step, True
            if self.overfitting():
                stop = "overfitting" if self.stop_on_overfit else None
                action = (
                    "stopping and keeping the best adapter" if stop else "set train.early_stopping.enabled=true to stop"
                )
                print(
                    f"\n[forgetless] warning: validation loss rose {self.patience} times in a row while the training "
                    f"loss fell (overfitting; best {self.best_val:.4f} at step {self.best_step}); {action}"
                )
        kl = result.get("retention_kl")
        if self.max_kl is not None and kl is not None and kl > self.max_kl:
            stop = stop or ("max_kl" if self.stop_on_kl else None)
            print(
                f"\n[forgetless] warning: KL to the base model {kl:.4f} per token is above eval.max_kl={self.max_kl} "
                f"at step {step}; {'stopping' if self.stop_on_kl else 'continuing (eval.on_max_kl=warn)'}"
            )
        return improved, stop

    def overfitting(self) -> bool:
        k = self.patience
        if len(self.val) <= k or len(self.train) <= k:
            return False
        val, train = self.val[-k - 1 :], self.train[-k - 1 :]
        rising = all(b > a for a, b in pairwise(val))
        falling = all(b < a for a, b in pairwise(train))
        return rising and falling

    def replay(self, metrics_file: Path) -> None:
        """Rebuild the history from metrics.jsonl (after a resume), without printing warnings."""
        if not metrics_file.exists():
            return
        for row in files.read_jsonl_records(metrics_file):
            if "loss" in row:
                self.train_loss(task_loss(row))
            elif "val_loss" in row:
                if self._since:
                    self.train.append(sum(self._since) / len(self._since))
                    self._since = []
                self.val.append(row["val_loss"])
                if row["val_loss"] < self.best_val:
                    self.best_val, self.best_step = row["val_loss"], row["step"]


def final_validation(model, out_dir: Path, summary: dict, result: dict, monitor, on_best) -> None:
    """The last step's validation (fit(last_validation=False)), from numbers the final evaluation
    measured on the same rows: logged, watched and kept as the best adapter like any validation,
    and the summary's best step updated."""
    path = Path(out_dir) / "metrics.jsonl"
    rows = files.read_jsonl_records(path) if path.exists() else []
    if any(row.get("step") == summary["steps"] and "val_loss" in row for row in rows):
        return  # a resumed run that had finished: its last validation is logged already
    log = MetricsLog(out_dir, append=True)
    log.write(summary["steps"], result)
    log.close()
    if monitor is None:
        return
    improved, _ = monitor.update(summary["steps"], result)  # warnings only: there is no step left to stop
    if improved and on_best is not None:
        on_best(model)
    summary |= {"best_step": monitor.best_step, "best_val_loss": monitor.best_val if monitor.val else None}
