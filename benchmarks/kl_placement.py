"""Where should the LwF KL term apply? Trains the quickstart under the presets and KL placements.

Variants (the recipe quickstart-long: the quickstart's task, seed and data order at its original 60
steps, lr 1e-3, cosine; the five-minute quickstart is shorter and hotter):
  none         task loss only (plain LoRA): the reference for "share of gain";
  lwf          λ=0.5 KL on the task rows' non-answer tokens (context; lwf has no rehearsal rows);
  lwf_answers  λ=0.5 KL on the task answers only (pulls straight against the task loss);
  rehearsal    general rows (the base model's own answers) in every batch, CE on them;
  full         rehearsal rows + KL on context and rehearsal rows, no CE on rehearsal rows (the default);
  full_ce1     full + CE on the rehearsal rows at weight 1 (forgetting.rehearsal.weight=1);
  full_ce03    full + CE on the rehearsal rows at weight 0.3;
  full_reh_kl  rehearsal rows + KL on the rehearsal rows only (no teacher pass over the task rows);
  full_pos50, full_pos25  full with the KL on a random 50% / 25% of its positions per micro-batch
               (forgetting.lwf.positions: an unbiased estimate; what it does to retention).
The four preset variants are exactly what `forgetless compare quickstart-long` trains, so with
the same output_dir that command reuses them. Finished variants are reused; an interrupted run continues.
Run: python benchmarks/kl_placement.py [variant ...] [output_dir=runs/compare] [other overrides]
"""

from __future__ import annotations

import sys

from forgetless import api
from forgetless.model.hardware import quiet_third_party_logs
from forgetless.recipes import compare

VARIANTS = {
    "none": ["forgetting.preset=none"],
    "lwf": ["forgetting.preset=lwf"],
    "rehearsal": ["forgetting.preset=rehearsal"],
    "full": ["forgetting.preset=full"],
    "full_ce1": ["forgetting.preset=full", "forgetting.rehearsal.weight=1.0"],
    "full_ce03": ["forgetting.preset=full", "forgetting.rehearsal.weight=0.3"],
    "full_reh_kl": ["forgetting.preset=full", "forgetting.lwf.tokens=[rehearsal]"],
    "lwf_answers": ["forgetting.preset=lwf", "forgetting.lwf.tokens=[answers]"],
    "full_pos50": ["forgetting.preset=full", "forgetting.lwf.positions=0.5"],
    "full_pos25": ["forgetting.preset=full", "forgetting.lwf.positions=0.25"],
}


def main(argv: list[str]) -> None:
    quiet_third_party_logs()
    chosen = {a: VARIANTS[a] for a in argv if a in VARIANTS} or VARIANTS  # names pick variants; the rest: overrides
    cfg = api.load_config("quickstart-long", ["output_dir=runs/compare", *(a for a in argv if a not in VARIANTS)])
    rows = api.compare_presets(cfg, chosen)
    print("\n" + compare.table(rows, cfg.eval.metric))


if __name__ == "__main__":
    main(sys.argv[1:])
