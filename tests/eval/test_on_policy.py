"""On-policy replay's pool: rows found by their prompt, and a resumed run's kept answers put back, at the
rehearsal positions they were replayed at (rounds after its checkpoint dropped)."""

from __future__ import annotations

import json

from forgetless.config.forgetting import OnPolicyConfig
from forgetless.data.formats import Example
from forgetless.data.mixture import MixedBatches
from forgetless.data.render import encode
from forgetless.eval.on_policy import LOG, OnPolicy, prompt_key


def test_a_resumed_run_puts_the_kept_answers_back_and_a_fresh_one_starts_clean(tokenizer, tmp_path):
    answer = {"role": "assistant", "content": "A"}
    examples = [Example(f"g:{i}", messages=({"role": "user", "content": f"Question {i}?"}, answer)) for i in range(3)]
    original = [{**encode(tokenizer, e), "rehearsal": True} for e in examples]
    assert len({prompt_key(r) for r in original}) == 3
    records = [
        {"step": 2, "prompt": 1, "answer": "A longer answer.", "kl_per_token": 0.01, "kept": True, "replay_at": 5},
        {"step": 2, "prompt": 2, "answer": "Drifted.", "kl_per_token": 0.9, "kept": False},
        {"step": 4, "prompt": 0, "answer": "After the checkpoint.", "kl_per_token": 0.01, "kept": True, "replay_at": 9},
    ]
    (tmp_path / "checkpoints" / "step-0000003").mkdir(parents=True)  # the run resumes from step 3
    (tmp_path / LOG).write_text("".join(json.dumps(r) + "\n" for r in records))
    batches = MixedBatches(original, original, batch_size=2, ratio=0.5, seed=0, pad_id=0)
    pool = batches.general
    OnPolicy(OnPolicyConfig(), tokenizer, batches, examples, tmp_path, resume=True, last=10)
    assert batches.replay == {5: 1}  # replayed where the run before replayed it; step 4's round runs again
    assert [json.loads(x)["step"] for x in (tmp_path / LOG).read_text().splitlines()] == [2, 2]
    assert pool[0]["input_ids"] == original[0]["input_ids"] and pool[2]["input_ids"] == original[2]["input_ids"]
    assert pool[1]["origin"] == "on_policy:step 2:prompt 1" and pool[1]["replay"] and pool[1]["rehearsal"]
    assert prompt_key(pool[1]) == prompt_key(original[1]) and "A longer answer." in tokenizer.decode(
        pool[1]["input_ids"]
    )
    OnPolicy(OnPolicyConfig(), tokenizer, MixedBatches(original, original, 2, 0.5, 0, 0), examples, tmp_path, False, 10)
    assert not (tmp_path / LOG).exists()
