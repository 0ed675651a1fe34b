"""metrics.jsonl (one JSON object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
from pathlib import Path

from forgetless import files


class MetricsLog:
    def __init__(self, out_dir: Path, enabled: bool = True, resume_step: int = 0, append: bool = False):
        """append: add to what the run logged (after training); otherwise lines after resume_step go."""
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if not append:
            self._drop_after(resume_step)
        try:
            # tensorboard takes seconds to import: only when a run logs
            from torch.utils.tensorboard import SummaryWriter

            purge = None if append else resume_step or None
            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=purge)
        except ImportError:  # tensorboard is a dependency, but a broken install should not stop training
            print("[forgetless] tensorboard is not importable; writing metrics.jsonl only")

    def _drop_after(self, step: int) -> None:
        """On resume, lines logged after the checkpoint belong to the lost future: remove them."""
        if not self.path.exists():
            return
        kept = [row for row in files.read_jsonl_records(self.path) if row.get("step", 0) <= step]
        files.write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
