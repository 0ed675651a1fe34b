from pathlib import Path

import pytest
from pydantic import ValidationError

from forgetless import api
from forgetless.config import loader
from forgetless.config import pipeline as pipeline_config
from forgetless.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_literature():
    cfg = loader.load()
    assert (cfg.peft.r, cfg.peft.alpha, cfg.peft.dropout, cfg.peft.target_modules) == (8, 16, 0.05, "all-linear")
    t = cfg.train
    assert (cfg.lr, t.epochs, t.batch_size, t.grad_accum) == (2e-4, 3, 4, 4)
    assert (t.scheduler, t.warmup_ratio, t.weight_decay, t.max_grad_norm) == ("cosine", 0.03, 0.01, 1.0)
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.model.quantization == "none"


def test_overrides_are_typed():
    cfg = loader.load(
        None, ["train.lr=1e-4", "peft.r=16", "train.max_steps=3", "train.grad_checkpointing=true", "data.train=a.jsonl"]
    )
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.peft.r == 16 and cfg.train.max_steps == 3
    assert cfg.train.grad_checkpointing is True and cfg.data.train == ["a.jsonl"]


def test_config_is_frozen():
    cfg = loader.load()
    with pytest.raises(ValidationError):
        cfg.train.lr = 1.0


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  batch_sise: 4\n")
    with pytest.raises(UserError, match=r"c.yaml:3: unknown key 'train.batch_sise'; did you mean 'train.batch_size'"):
        loader.load(path)


def test_bad_value_names_key_value_and_allowed(tmp_path):
    with pytest.raises(UserError, match=r"model.quantization: Input should be 'none', '4bit' or '8bit' \(got '3bit'\)"):
        loader.load(None, ["model.quantization=3bit"])
    with pytest.raises(UserError, match=r"peft.r: Input should be greater than or equal to 1 \(got 0\)"):
        loader.load(None, ["peft.r=0"])
    with pytest.raises(UserError, match=r"train.lr: Input should be a valid number"):
        loader.load(None, ["train.lr=fast"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="is not key=value"):
        loader.load(None, ["train.lr"])
    with pytest.raises(UserError, match="config file not found"):
        loader.load(tmp_path / "nope.yaml")


def test_relative_data_paths_are_relative_to_the_yaml(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data:\n  train: data/x.jsonl\n  validation: [builtin:quickstart/test.jsonl]\n")
    cfg = loader.load(path)
    assert cfg.data.train == [str(tmp_path / "sub" / "data" / "x.jsonl")]
    assert cfg.data.validation == ["builtin:quickstart/test.jsonl"]


def test_path_fields_are_marked_in_the_schema(tmp_path):
    """Defect: the path fields were a list kept apart from the schema, so a new one would not be
    resolved. Every field marked `path_field` is resolved relative to its YAML, in every section."""
    assert set(loader.path_keys()) == {
        ("data", "train"),
        ("data", "validation"),
        ("data", "chat_template"),
        ("forgetting", "rehearsal", "source"),
        ("forgetting", "rehearsal", "prompts"),
        ("eval", "retention_prompts"),
        ("eval", "benchmarks"),
        ("eval", "general_text"),
        ("model", "continue_from"),
    }
    path = tmp_path / "c.yaml"
    path.write_text("forgetting:\n  rehearsal:\n    prompts: p.jsonl\neval:\n  general_text: t.txt\n")
    cfg = loader.load(path)
    assert cfg.forgetting.rehearsal.prompts == str(tmp_path / "p.jsonl")
    assert cfg.eval.general_text == [str(tmp_path / "t.txt")]
    path.write_text("data:\n  chat_template: t/chat.jinja\n")  # a template file: relative to the YAML
    assert loader.load(path).data.chat_template == str(tmp_path / "t" / "chat.jinja")
    path.write_text("data:\n  chat_template: llama3\n")  # a bundled template's name stays a name
    assert loader.load(path).data.chat_template == "llama3"


def test_yes_and_no_as_labels_get_a_quoting_hint(tmp_path):
    """Defect: `labels: [yes, no, maybe]` (YAML 1.1 booleans) gave an error that named the key, not the cause."""
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  metric: accuracy\n  labels: [yes, no, maybe]\n")
    with pytest.raises(UserError) as e:
        loader.load(path)
    assert f"{path}:3: eval.labels.0: got the boolean True" in str(e.value)
    assert "yes/no, on/off and true/false are booleans in YAML; quote them ('yes')" in str(e.value)
    path.write_text("eval:\n  metric: accuracy\n  labels: ['yes', 'no', maybe]\n")
    assert loader.load(path).eval.labels == ["yes", "no", "maybe"]


CONFIGS = api.CONFIGS  # shipped as package data
ACCELERATE = CONFIGS / "accelerate"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CONFIGS.rglob("*.yaml") if ACCELERATE not in p.parents and not p.name.startswith("pipeline")),
    ids=lambda p: p.name,
)
def test_every_shipped_yaml_loads(path):
    loader.load(path)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("pipeline*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_loads(path):

    cfg = pipeline_config.load(path)
    loader.load(cfg.train)  # and the training config it names


@pytest.mark.parametrize("path", sorted(ACCELERATE.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_accelerate_config_parses(path):
    """accelerate's own parser; an unknown key raises there."""
    from accelerate.commands.config.config_args import ClusterConfig

    parsed = ClusterConfig.from_yaml_file(path)
    assert parsed.num_processes >= 2 and parsed.mixed_precision == "no"


def test_dump_round_trips(tmp_path):
    cfg = loader.load(None, ["peft.r=4", "data.train=x.jsonl"])
    loader.dump(cfg, tmp_path / "c.yaml")
    assert loader.load(tmp_path / "c.yaml") == cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"train": [str((Path.cwd() / "x.jsonl").resolve())]})}
    )


def test_describe_lists_every_key_with_help():
    text = loader.describe()
    assert "peft.r = 8" in text and "QLoRA" in text and "train.grad_accum = 4" in text


def test_a_runs_config_yaml_means_the_same_files_from_anywhere(tmp_path, monkeypatch):
    """A relative path on the command line is relative to the current directory; config.yaml keeps it
    absolute, so reading the run's config back (--resume, eval --run, --continue-from) finds the file,
    and a resume given the same relative override compares equal."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    monkeypatch.chdir(tmp_path)
    cfg = api.load_config(None, ["data.train=d/train.jsonl", "output_dir=runs/x"])
    loader.dump(cfg, tmp_path / "run-config.yaml")
    monkeypatch.chdir(tmp_path / "d")
    again = loader.load(tmp_path / "run-config.yaml")
    assert again.data.train == [str(tmp_path / "d" / "train.jsonl")]
    monkeypatch.chdir(tmp_path)
    assert loader.absolute(again) == loader.absolute(cfg)


def test_a_shipped_recipe_with_your_own_training_files_holds_out_yours(capsys):
    """`forgetless train data.train=mine.jsonl` (and the UI's default recipe with an upload): the quickstart's
    validation file scores the quickstart's tickets, so it is not used; a validation file you name is."""
    cfg = api.load_config(None, ["data.train=mine.jsonl"])
    assert cfg.data.validation == [] and cfg.data.validation_split == 0.1
    assert "not its validation file: data.validation_split of your rows is held out" in capsys.readouterr().out
    named = api.load_config("quickstart", ["data.train=mine.jsonl", "data.validation=mine-val.jsonl"])
    assert [Path(v).name for v in named.data.validation] == ["mine-val.jsonl"]
    assert api.load_config("quickstart").data.validation == ["builtin:quickstart/test.jsonl"]
    assert "not used" not in capsys.readouterr().out
