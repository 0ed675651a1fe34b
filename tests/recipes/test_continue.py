"""Task after task (`forgetless train B.yaml --continue-from runs/A`): B starts from A's adapter, A's
model is B's base side (LwF teacher, before scores, retention reference), B's result is one plain PEFT
adapter over the original base, rehearsal can replay A's training rows, and the report shows the
retention matrix."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from forgetless import api
from forgetless.adapters.views import base_view, is_continued
from forgetless.cli import main
from forgetless.errors import UserError
from forgetless.eval.earlier_tasks import backward_transfer, earlier_runs
from forgetless.recipes import evaluate
from tests.conftest import ROWS, tiny_args, write_jsonl

EVAL = ["eval.before_after=true", "eval.retention=true", "eval.max_examples=2", "eval.max_new_tokens=4"]
EVAL += ["eval.retention_max_prompts=4", "eval.retention_max_new_tokens=4", "eval.benchmarks=[]", "eval.report=true"]


def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def stages(tiny_dir, tmp_path_factory):
    """A (plain LoRA) then B continuing A with LwF and A's rows replayed; both score the same
    validation file, so B's before side can be compared with A's after side."""
    tmp = tmp_path_factory.mktemp("continue")
    val = write_jsonl(tmp / "val.jsonl", ROWS[:4])
    a_rows = write_jsonl(tmp / "a.jsonl", ROWS * 2)
    b_rows = write_jsonl(tmp / "b.jsonl", [{**r, "output": r["output"][::-1]} for r in ROWS * 2])
    common = ["peft.dropout=0", f"data.validation={val}", "data.validation_split=0", "train.lr=5e-2", *EVAL]
    a, b = tmp / "A", tmp / "B"
    api.train(api.load_config(None, tiny_args(tiny_dir, a_rows, a, "train.max_steps=4", *common)))
    more = ["forgetting.preset=full", f"forgetting.rehearsal.source=[{a}]", "train.max_steps=4"]
    api.train(api.load_config(None, tiny_args(tiny_dir, b_rows, b, *more, *common, f"model.continue_from={a}")))
    return a, b


def test_the_earlier_model_is_the_base_side(stages):
    a, b = stages
    ea, eb = _read(a / "eval.json"), _read(b / "eval.json")
    # B's "before" is measured on A's model: the same rows give A's "after" (a base cache keyed only by
    # the base model would have given A's "before" here)
    before_b, after_a = eb["task"]["perplexity"]["base"], ea["task"]["perplexity"]["finetuned"]
    assert before_b == pytest.approx(after_a, rel=1e-5)
    assert abs(after_a - ea["task"]["perplexity"]["base"]) > 1e-3 * after_a
    steps = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines() if '"lwf"' in x]
    # the first step's LwF KL is zero: the student starts as A and the teacher is A (against the
    # original base it would be A's own drift, which is far from zero: see A's retention KL)
    assert steps[0]["lwf"] < 1e-7 and steps[-1]["lwf"] > 1e-5
    assert ea["retention"]["prompts"]["kl_per_token"] > 1e-3


def test_the_result_is_one_plain_adapter_over_the_original_base(tiny_dir, stages):
    a, b = stages
    assert sorted(p.name for p in (b / "adapter").iterdir() if p.is_dir()) == []  # A's frozen copy is not saved
    trained_a, trained_b = (
        load_file(str(a / "adapter/adapter_model.safetensors")),
        load_file(str(b / "adapter/adapter_model.safetensors")),
    )
    assert trained_a.keys() == trained_b.keys()
    assert any(not torch.equal(trained_a[k], trained_b[k]) for k in trained_a)  # B trained on from A
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(b / "adapter"))
    assert list(model.peft_config) == ["default"] and not is_continued(model)


def test_rehearsal_replays_the_earlier_runs_training_rows(stages):
    """Under preset full the CE on rehearsal rows is left to the KL for the base model's own answers,
    but A's rows carry real answers that the KL to A does not teach: they are replayed with CE (it was 0)."""
    a, b = stages
    assert _read(b / "summary.json")["general_rows"] == _read(a / "summary.json")["train_rows"]
    assert any("training rows of the earlier run" in n for n in _read(b / "summary.json")["data_notes"])
    steps = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines() if '"ce_rehearsal"' in x]
    assert steps and any(s["ce_rehearsal"] > 0 for s in steps)  # steps without a rehearsal row log 0


def test_earlier_tasks_are_scored_and_the_report_shows_the_matrix(stages):
    a, b = stages
    summary, ev = _read(b / "summary.json"), _read(b / "eval.json")
    assert summary["continued_from"] == str(a.resolve())
    assert earlier_runs(b) == [a.resolve(), b.resolve()]
    earlier = ev["earlier_tasks"]["A"]["task"]
    assert earlier["n"] == _read(a / "eval.json")["task"]["n"] == 2 and "exact_match" in earlier
    report = (b / "report.md").read_text()
    matrix = report[report.index("retention matrix") :]
    assert "| base model |" in matrix and "| A |" in matrix and "| B |" in matrix
    bwt = backward_transfer(b)  # A's score after B minus A's score after A
    change = earlier["exact_match"] - _read(a / "eval.json")["task"]["exact_match"]["finetuned"]
    assert bwt["changes"] == {"A": pytest.approx(change)} and bwt["bwt"] == pytest.approx(change)
    final_b = ev["task"]["exact_match"]["finetuned"]
    assert bwt["final_average"] == pytest.approx((earlier["exact_match"] + final_b) / 2)
    assert backward_transfer(a) is None


def test_a_separate_eval_of_the_continued_run_gives_its_numbers(stages, tmp_path):
    _, b = stages
    again = evaluate.run(api.load_config(str(b / "config.yaml")), str(b), None, tmp_path / "eval")
    reported = _read(b / "eval.json")
    for side in ("base", "finetuned"):
        assert again["task"]["perplexity"][side] == pytest.approx(reported["task"]["perplexity"][side], rel=1e-5)
    kl = again["retention"]["prompts"]["kl_per_token"]
    assert kl == pytest.approx(reported["retention"]["prompts"]["kl_per_token"], rel=1e-4)


def test_the_teacher_view_switches_adapters_without_changing_what_trains(tiny_dir, stages):
    a, _ = stages
    from forgetless.adapters import continued  # the two calls the recipe makes, one after the other

    model = continued.load_previous(AutoModelForCausalLM.from_pretrained(tiny_dir), a / "adapter")
    model = continued.continue_training(model, a / "adapter")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.default" in name:
                p.add_(0.3)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains and all(".default." in n for n in trains)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    a_only = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(a / "adapter"))
    with torch.no_grad(), base_view(model) as teacher:
        assert torch.allclose(teacher(ids).logits, a_only(ids).logits, atol=1e-5)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trains
    assert not torch.allclose(model(ids).logits, a_only(ids).logits, atol=1e-3)


def test_refusals(tiny_dir, train_file, tmp_path, stages, capsys):
    a, _ = stages
    out = tmp_path / "x"
    with pytest.raises(UserError, match="not a finished run directory"):
        api.train(api.load_config(None, tiny_args(tiny_dir, train_file, out, f"model.continue_from={tmp_path}")))
    with pytest.raises(UserError, match=r"that adapter is lora r=4 .* set peft.method=lora peft.r=4"):
        api.train(api.load_config(None, tiny_args(tiny_dir, train_file, out, f"model.continue_from={a}", "peft.r=8")))
    with pytest.raises(UserError, match=r"that run trained .*tiny-llama.*, this config trains smollm2-135m-instruct"):
        api.train(
            api.load_config(
                None,
                tiny_args(tiny_dir, train_file, out, f"model.continue_from={a}", "model.name=smollm2-135m-instruct"),
            )
        )
    with pytest.raises(
        UserError, match=r"set peft.alpha=16.0 peft.dropout=0.0 \(this config has alpha=32.0, dropout=0.1\)"
    ):
        api.train(
            api.load_config(
                None,
                tiny_args(tiny_dir, train_file, out, f"model.continue_from={a}", "peft.alpha=32", "peft.dropout=0.1"),
            )
        )
    with pytest.raises(UserError, match="was trained with another chat template, which this continuation keeps"):
        api.train(
            api.load_config(
                None,
                tiny_args(
                    tiny_dir, train_file, out, f"model.continue_from={a}", "peft.dropout=0", "data.chat_template=llama3"
                ),
            )
        )
    assert not out.exists()  # refused before the run directory is claimed
    with pytest.raises(UserError, match="continues an earlier run's LoRA/DoRA adapter with recipe sft"):
        api.load_config(None, [f"model.continue_from={a}", "peft.method=ia3"])
    with pytest.raises(UserError, match="this config has recipe dpo"):
        api.load_config(None, [f"model.continue_from={a}", "recipe=dpo"])
    assert main(["train", *tiny_args(tiny_dir, train_file, out, "peft.r=8"), "--continue-from", str(a)]) == 2
    assert "forgetless: error: model.continue_from=" in capsys.readouterr().err


def test_a_continuation_renders_prompts_with_the_earlier_runs_template(tiny_dir, train_file, tmp_path, stages):
    """A trained with another template than the model's own: B (no data.chat_template) used the model's."""
    import shutil

    from forgetless.model.chat_format import LLAMA3

    a, _ = stages
    copy = tmp_path / "A-llama3"
    shutil.copytree(a, copy)
    config = _read(copy / "adapter" / "tokenizer_config.json")
    (copy / "adapter" / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": LLAMA3}))
    (copy / "adapter" / "chat_template.jinja").unlink(missing_ok=True)
    out = tmp_path / "B"
    api.train(
        api.load_config(None, tiny_args(tiny_dir, train_file, out, f"model.continue_from={copy}", "peft.dropout=0"))
    )
    saved = out / "adapter" / "chat_template.jinja"
    found = saved.read_text() if saved.is_file() else _read(out / "adapter" / "tokenizer_config.json")["chat_template"]
    assert found == LLAMA3


def test_on_policy_replay_answers_the_earlier_runs_prompts_too(tiny_dir, tmp_path, monkeypatch):
    """After --continue-from, the current model answers A's training prompts as well as the general ones,
    as A was asked them (its system prompt written in, so the answer's row has the prompt of A's row in
    the pool); an answer within the filter replaces A's row, recorded with where its prompt came from."""
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    a, c = tmp_path / "A", tmp_path / "C"
    asked = ["data.system_prompt=You triage support tickets.", "data.validation=builtin:quickstart/test.jsonl"]
    api.train(api.load_config(None, tiny_args(tiny_dir, write_jsonl(tmp_path / "a.jsonl", ROWS), a, *asked)))
    general = write_jsonl(tmp_path / "general.jsonl", [{"instruction": f"Name colour {i}."} for i in range(3)])
    on_policy = [f"forgetting.rehearsal.source=[on_policy, {a}]", f"forgetting.rehearsal.prompts={general}"]
    on_policy += ["forgetting.rehearsal.max_new_tokens=4", "forgetting.rehearsal.on_policy.every=1"]
    on_policy += ["forgetting.rehearsal.on_policy.prompts=11", "forgetting.rehearsal.on_policy.max_new_tokens=4"]
    on_policy += ["forgetting.rehearsal.on_policy.max_kl=1e6", "forgetting.preset=full"]  # 11 = 3 general + A's 8
    c_rows = write_jsonl(tmp_path / "c.jsonl", [{**r, "output": r["output"].upper()} for r in ROWS])
    c_args = tiny_args(tiny_dir, c_rows, c, *on_policy, f"model.continue_from={a}", "train.max_steps=3")
    api.train(api.load_config(None, c_args))
    records = [json.loads(x) for x in (c / "on_policy.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1] * 11 + [2] * 11  # every prompt at every step but the last (3)
    earlier = [r for r in records if r["from"].startswith(f"{a}: ")]
    lines = {r["from"].removeprefix(f"{a}: {tmp_path / 'a.jsonl'}:") for r in earlier}
    assert len(earlier) == 16 and lines == {str(n) for n in range(1, 9)}  # A's 8 training rows (its validation: a file)
    assert all(r["kept"] == bool(r["answer"].strip()) for r in records)  # each found its row in the pool
    assert any(r["kept"] for r in earlier)
