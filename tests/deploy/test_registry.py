"""Registry on a real SQLite MLflow store in a temporary directory, and the pipeline end to end
on the tiny model, including resume after an injected failure."""

import json

import pytest
import yaml

import forgetless
from forgetless.cli import main
from forgetless.config import loader
from forgetless.config import pipeline as pipeline_config
from forgetless.deploy import registry
from forgetless.training import tracking


@pytest.fixture
def scored_overrides(tiny_overrides, tmp_path):
    """A tiny run that also scores held-out rows and retention, so the gates have numbers."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "Say hi."}\n{"instruction": "Say bye."}\n')
    return [
        *tiny_overrides,
        "eval.before_after=true",
        "eval.max_new_tokens=4",
        "eval.samples=1",
        "eval.retention=true",
        f"eval.retention_prompts={prompts}",
        "eval.retention_max_new_tokens=4",
    ]


def test_register_list_show_and_gated_promotion(scored_overrides, tmp_path, capsys):
    forgetless.train({}, scored_overrides)
    run, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    (tmp_path / "reg").mkdir()
    assert main(["registry", "register", str(run), "--name", "triage", "--tracking-uri", uri]) == 0
    assert "registered triage version 1" in capsys.readouterr().out
    assert main(["registry", "register", str(run), "--name", "triage", "--tracking-uri", uri]) == 0
    capsys.readouterr()
    rows = registry.versions("triage", uri)
    assert [r["version"] for r in rows] == [1, 2]
    v = rows[0]
    assert v["base_model"].endswith("tiny-llama0") and "task.exact_match" in v["metrics"]
    assert v["tags"]["data.train.0"].split(" sha256:")[1] and v["tags"]["code_version"].startswith("forgetless")
    assert (tmp_path / "reg" / "artifacts").is_dir()  # artifacts beside the SQLite database
    assert main(["registry", "show", "triage", "1", "--tracking-uri", uri]) == 0
    assert json.loads(capsys.readouterr().out)[0]["version"] == 1
    assert main(["registry", "promote", "triage", "1", "--min-task", "exact_match=1.5", "--tracking-uri", uri]) == 1
    assert "fails task exact_match" in capsys.readouterr().err
    gates = tmp_path / "gates.yaml"
    gates.write_text("min_task: {exact_match: 0.0}\nmax_kl: 1000\nmax_benchmark_drop: 1.0\n")
    assert main(["registry", "promote", "triage", "2", "--gates", str(gates), "--tracking-uri", uri]) == 0
    assert registry.versions("triage", uri)[1]["aliases"] == ["production"]
    assert main(["registry", "list", "--tracking-uri", uri]) == 0
    assert "triage v2 production" in capsys.readouterr().out


def test_gates_by_hand():
    values = {"task.exact_match": 0.7, "retention.kl_per_token": 0.05, "retention.mc.jsonl.acc_diff": -0.1}
    assert registry.check_gates(values, pipeline_config.Gates(min_task={"exact_match": 0.6}, max_kl=0.1)) == []
    failed = registry.check_gates(
        values, pipeline_config.Gates(min_task={"rouge_l": 0.5}, max_kl=0.01, max_benchmark_drop=0.05)
    )
    assert failed == [
        "task rouge_l missing < 0.5",
        "KL to base 0.05 > 0.01",
        "retention.mc.jsonl dropped 0.100 > 0.05",
    ]
    met = pipeline_config.gates({}, budget_met=True)
    assert registry.check_gates(values | {"budget.met": 1.0}, met) == []
    assert registry.check_gates(values | {"budget.met": 0.0}, met) == [
        "budget_met: the run did not meet its forgetting budget"
    ]
    assert registry.check_gates(values, met) == ["budget_met: the run was trained without forgetting.budget"]


def test_the_budget_verdict_is_among_the_metrics_gates_read(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"task": {"exact_match": {"finetuned": 0.5}}}))
    assert "budget.met" not in tracking.metrics(tmp_path)  # no summary, or a run without a budget
    (tmp_path / "summary.json").write_text(json.dumps({"budget": {"met": False}}))
    assert tracking.metrics(tmp_path) == {"task.exact_match": 0.5, "budget.met": 0.0}


def test_pipeline_end_to_end_resumes_after_failure(scored_overrides, tmp_path, capsys):
    train_cfg = tmp_path / "train.yaml"
    loader.dump(forgetless.load_config({}, scored_overrides), train_cfg)
    out = tmp_path / "pipe-run"
    (tmp_path / "a-file").write_text("not a directory")
    spec = {
        "train": str(train_cfg),
        "output_dir": str(out),
        "registry": {"name": "triage", "tracking_uri": f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"},
        "gates": {"min_task": {"exact_match": 1.5}},
        "export": {"format": "ollama", "quant": "q8_0"},
    }
    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(yaml.safe_dump(spec))
    assert main(["pipeline", str(pipe)]) == 2  # injected failure: the registry cannot be reached
    assert "pipeline failed at register" in capsys.readouterr().err
    state = json.loads((out / "pipeline.json").read_text())["stages"]
    assert [state[s]["status"] for s in ("data", "train", "evaluate", "export", "register")] == ["done"] * 4 + [
        "failed"
    ]
    assert (out / "export" / "Modelfile").is_file() and state["export"]["result"]["file"].endswith("-q8_0.gguf")
    assert json.loads((out / "data_check.json").read_text())["valid"] == 8  # the data stage's check report
    trained = (out / "summary.json").stat().st_mtime

    (tmp_path / "reg").mkdir()
    spec["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    pipe.write_text(yaml.safe_dump(spec))
    assert main(["pipeline", str(pipe)]) == 2  # the gate refuses promotion
    captured = capsys.readouterr()
    assert "train: done in an earlier run, skipped" in captured.out and "fails the gates" in captured.err
    assert (out / "summary.json").stat().st_mtime == trained  # not retrained

    spec["gates"] = {"min_task": {"exact_match": 0.0}}
    pipe.write_text(yaml.safe_dump(spec))
    assert main(["pipeline", str(pipe)]) == 0
    state = json.loads((out / "pipeline.json").read_text())["stages"]
    assert state["register"]["result"]["version"] == 1 and state["promote"]["status"] == "done"
    assert registry.versions("triage", spec["registry"]["tracking_uri"])[0]["aliases"] == ["production"]
    tags = registry.lineage(out)  # the registered version knows the exported file it came with
    assert tags["export.format"] == "ollama" and tags["export.sha256"] == state["export"]["result"]["sha256"]


def test_a_strict_data_check_stops_the_pipeline_before_training(scored_overrides, tmp_path, capsys):
    rows = [{"instruction": "Same question?", "output": "Same answer."}] * 4 + [
        {"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(4)
    ]
    data = tmp_path / "dup.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_cfg = tmp_path / "train.yaml"
    loader.dump(forgetless.load_config({}, [*scored_overrides, f"data.train={data}"]), train_cfg)
    out = tmp_path / "strict-run"
    spec = {"train": str(train_cfg), "output_dir": str(out), "registry": {"name": "x"}, "data_check": {"strict": True}}
    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(yaml.safe_dump(spec))
    assert main(["pipeline", str(pipe)]) == 2
    assert "data check (strict): 3 exact duplicates (38% of the rows)" in capsys.readouterr().err
    assert not (out / "adapter").exists()


def test_pipeline_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("train: x.yaml\nregistry: {name: a}\nstages: 3\n")
    with pytest.raises(forgetless.UserError, match=r"p.yaml:3: stages: Extra inputs are not permitted"):
        pipeline_config.load(bad)


def test_training_logs_to_mlflow_when_enabled(tiny_overrides, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    forgetless.train({}, [*tiny_overrides, "train.mlflow=true", f"train.mlflow_tracking_uri={uri}"])
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("forgetless").experiment_id])
    assert run.data.params["train.max_steps"] == "6" and "loss" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 6


def test_pipeline_prepares_the_data_and_trains_on_the_prepared_file(scored_overrides, tmp_path):
    """data_prep: dedup drops the copies, decontaminate the held-out row, augment adds synonym
    variants; the train stage reads OUTPUT_DIR/data/, and config.yaml says so."""
    rows = [{"instruction": "Please refund my broken kettle quickly.", "output": "refund"}] * 3 + [
        {"instruction": "Where is the parcel I ordered last week?", "output": "shipping"},
        {"instruction": "How do I change the password of my account?", "output": "account"},
    ]
    data, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held.write_text(json.dumps(rows[3]) + "\n")
    train_cfg = tmp_path / "train.yaml"
    loader.dump(forgetless.load_config({}, [*scored_overrides, f"data.train={data}"]), train_cfg)
    out = tmp_path / "prep-run"
    spec = {
        "train": str(train_cfg),
        "output_dir": str(out),
        "registry": {"name": "prep", "tracking_uri": f"sqlite:///{tmp_path}/prep.db"},
        "data_check": {"against": [str(held)]},
        "data_prep": {"dedup": True, "decontaminate": True, "augment": {"method": "synonyms", "n": 1}},
    }
    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(yaml.safe_dump(spec))
    main(["pipeline", str(pipe)])  # the gates may refuse promotion: the stages before it are what is tested
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    prepared = out / "data" / "0-train.jsonl"
    kept = [json.loads(x) for x in prepared.read_text().splitlines()]
    assert [r["output"] for r in kept[:2]] == ["refund", "account"]  # 2 copies and the held-out row removed
    assert len(kept) == 2 + stages["data"]["result"]["prepared"][f"{data}: augment"]["written"] >= 3
    assert stages["train"]["status"] == "done"
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["train"] == [str(prepared)]
    assert json.loads((out / "data_check.json").read_text())["augmented"]["rows"] == len(kept) - 2
