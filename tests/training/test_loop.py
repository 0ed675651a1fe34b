"""Training on the tiny model: learning, what changes, outputs, exact resume, NaN stops."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import forgetless
from forgetless import cli
from forgetless.config.schema import ForgettingConfig, TrainConfig
from forgetless.data.batching import Batches
from forgetless.errors import TrainingDiverged
from forgetless.objectives.objective import Objective
from forgetless.objectives.sft import objective
from forgetless.training import checkpoint, loop
from tests.conftest import write_jsonl

pytestmark = pytest.mark.seconds(60)  # the longest files start first (tests/conftest.py)


def test_loss_falls_when_overfitting_and_outputs_are_complete(tiny_overrides, tmp_path):
    summary = forgetless.train({}, [*tiny_overrides, "train.max_steps=30", "train.save_every=10"])
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 30 and sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert any("val_loss" in x for x in lines)
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert summary["steps"] == 30 and summary["tokens"] > 0 and summary["effective_batch"] == 4
    assert json.loads((run / "summary.json").read_text())["steps"] == 30


def test_only_adapter_weights_change_and_plain_peft_loads_them(tiny_dir, tiny_overrides, tmp_path):
    forgetless.train({}, tiny_overrides)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter"))
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it trained
    for name, value in tuned.get_base_model().state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(value, before[key]), name
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        with tuned.disable_adapter():
            plain = tuned(input_ids=ids).logits
        assert not torch.allclose(tuned(input_ids=ids).logits, plain)


def _cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "forgetless", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_overrides, tmp_path):
    rows = [{"input": f"Ticket {i}: my parcel is late", "output": f"shipping {i}"} for i in range(64)]
    data = write_jsonl(tmp_path / "many.jsonl", rows)  # 16 steps per epoch: crosses epoch boundaries
    common = [
        *tiny_overrides,
        f"data.train={data}",
        "train.max_steps=60",
        "train.save_every=10",
        "train.eval_every=1000",
        "peft.dropout=0.1",
    ]  # dropout on: RNG state must be restored too
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli.main(["train", *common, f"output_dir={full}"]) == 0  # uninterrupted, in this process
    proc = _cli([*common, f"output_dir={cut}"])
    deadline = time.time() + 120
    while not (cut / "checkpoints" / "step-0000020").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "summary.json").exists()
    resumed = _cli([*common, f"output_dir={cut}", "--resume"])
    out, _ = resumed.communicate()
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(cut / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    lines = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == list(range(1, 61))  # lines logged after the checkpoint were dropped, not duplicated


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tiny_dir, tokenizer, tmp_path):
    from forgetless.adapters import attaching
    from forgetless.config.schema import PeftConfig

    model = attaching.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), PeftConfig(r=4), quantized=False, grad_checkpointing=False
    )
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 8
    calls = {"n": 0}

    def poisoned(m, batch, norm):
        calls["n"] += 1
        loss = objective(ForgettingConfig(preset="none")).loss(m, batch, norm)["ce"]
        return {"ce": loss * float("nan") if calls["n"] > 4 else loss}

    cfg = TrainConfig(max_steps=10, batch_size=2, grad_accum=1, save_every=2, lr=2e-4)
    with pytest.raises(
        TrainingDiverged, match=r"loss became nan \(grad norm nan\) at step 5; the last good checkpoint"
    ):
        loop.fit(model, Batches(rows, 2, 0, 0), Objective(poisoned), cfg, tmp_path)
    assert checkpoint.latest(tmp_path).name == "step-0000004"
    assert (checkpoint.latest(tmp_path) / "state.pt").is_file()


def test_half_written_checkpoint_is_never_picked(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-0000002").mkdir(parents=True)
    (root / ".tmp-4-123").mkdir()  # a crash mid-write leaves only this
    assert checkpoint.latest(tmp_path).name == "step-0000002"


def test_batches_are_seeded_and_resumable():
    rows = [{"input_ids": [i, i], "labels": [i, i]} for i in range(10)]
    b = Batches(rows, 3, seed=7, pad_id=0)
    first = [x["input_ids"][:, 0].tolist() for x in b.epoch(0)]
    assert first == [x["input_ids"][:, 0].tolist() for x in Batches(rows, 3, 7, 0).epoch(0)]
    assert first[2:] == [x["input_ids"][:, 0].tolist() for x in b.epoch(0, start=2)]
    assert first != [x["input_ids"][:, 0].tolist() for x in b.epoch(1)]
    assert sorted(x for batch in first for x in batch) == list(range(10)) and len(b) == 4


def test_validation_split_when_no_file(tiny_overrides, tmp_path):
    summary = forgetless.train({}, [*tiny_overrides, "train.max_steps=1"])
    assert (summary["train_rows"], summary["validation_rows"]) == (6, 2)


def test_existing_run_is_not_overwritten_silently(tiny_overrides):
    forgetless.train({}, [*tiny_overrides, "train.max_steps=1"])
    with pytest.raises(forgetless.UserError, match="already holds a run; pass --resume"):
        forgetless.train({}, [*tiny_overrides, "train.max_steps=1"])


def test_bad_data_file_stops_before_training(tiny_overrides, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": "y"}, '{"instruction": '])
    with pytest.raises(forgetless.UserError, match=r"bad.jsonl:2: malformed JSON"):
        forgetless.train({}, [*tiny_overrides, f"data.train={bad}"])
    summary = forgetless.train(
        {},
        [*tiny_overrides, f"data.train={bad}", "data.on_error=skip", "data.validation_split=0", "train.max_steps=1"],
        overwrite=True,
    )
    assert summary["data_notes"][0].startswith("skipped 1 bad row(s)")


def test_before_after_scores_are_reported(tiny_overrides, tmp_path):
    summary = forgetless.train(
        {}, [*tiny_overrides, "train.max_steps=2", "eval.before_after=true", "eval.max_new_tokens=4", "eval.samples=1"]
    )
    for key in ("task_before", "task_after"):
        assert set(summary[key]) >= {"exact_match", "rouge_l", "n", "samples"} and summary[key]["n"] == 2
    assert Path(tmp_path / "run" / "eval_before.json").is_file()


def test_held_ctrl_c_is_raised_after_the_block_and_an_ignored_one_stays_ignored():
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt), loop._uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
            done = True  # the block finishes before the interrupt is raised
        assert done
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started with `&` by a script
        with loop._uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_resume_with_other_eval_settings_scores_the_base_model_again(tiny_overrides, tmp_path):
    """eval_before.json of a run scored 2 validation rows at 4 new tokens; resumed with
    eval.max_examples=1, "before" must come from the new settings too (it was read back unchanged,
    so before had n=2 and after n=1)."""
    scored = [*tiny_overrides, "eval.before_after=true", "eval.max_new_tokens=4", "eval.samples=0"]
    first = forgetless.train({}, [*scored, "train.max_steps=2"])
    assert first["task_before"]["n"] == first["task_after"]["n"] == 2
    again = forgetless.train({}, [*scored, "train.max_steps=3", "eval.max_examples=1"], resume=True)
    assert again["task_before"]["n"] == again["task_after"]["n"] == 1
    same = forgetless.train({}, [*scored, "train.max_steps=4", "eval.max_examples=1"], resume=True)
    assert same["task_before"] == again["task_before"]  # same settings: reused


class _Payload:
    """A pickle that runs code when loaded (what a hostile state.pt in a copied run directory holds)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_never_runs_the_pickle_in_a_copied_checkpoint(tiny_overrides, tmp_path):
    """torch.load(weights_only=False) executed whatever state.pt said; now it is read as data only."""
    forgetless.train({}, [*tiny_overrides, "train.max_steps=2", "train.save_every=1"])
    state = checkpoint.latest(tmp_path / "run") / "state.pt"
    assert checkpoint.load_state(state)["progress"]["step"] == 2  # our own files load safely
    marker = tmp_path / "pwned"
    torch.save({"progress": _Payload(marker)}, state)
    with pytest.raises(forgetless.UserError, match="cannot be read"):
        forgetless.train({}, [*tiny_overrides, "train.max_steps=3"], resume=True)
    assert not marker.exists()


def test_a_run_whose_every_step_is_warm_up_says_its_adapter_did_not_change(tiny_overrides, tmp_path, capsys):
    """train.max_steps=1 with a warm-up: the only step runs at lr 0 and the saved adapter equals its
    initialisation; the run reported success as if it had trained."""
    summary = forgetless.train({}, [*tiny_overrides, "train.max_steps=1", "train.warmup_ratio=0.05"])
    assert summary["adapter_unchanged"] is True
    assert "every step ran at learning rate 0" in capsys.readouterr().out
    moved = forgetless.train({}, [*tiny_overrides, "train.max_steps=2", "train.warmup_ratio=0.05"], overwrite=True)
    assert moved["adapter_unchanged"] is False


def test_a_max_length_beyond_the_models_context_is_capped_with_a_line(tiny_overrides, tmp_path, capsys):
    """data.max_length=100000000 for a model of 512 positions was accepted as it was."""
    forgetless.train({}, [*tiny_overrides, "train.max_steps=1", "data.max_length=100000000"])
    assert "data.max_length 100000000 -> 512" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["max_length"] == 512
