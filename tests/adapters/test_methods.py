"""Every fine-tuning method on the tiny model: identity at start, what trains, learning, save/load,
merge, the base view, and the errors for combinations that cannot work."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import forgetless
from forgetless import api
from forgetless.adapters import attaching, merge, saved, views
from forgetless.config import loader
from forgetless.config.schema import PeftConfig
from forgetless.errors import UserError
from forgetless.model import forward
from forgetless.model.likelihood import ce_sum
from tests.conftest import save_tiny

IDENTITY = ["lora", "dora", "ia3", "adapter", "bitfit", "selective", "full"]  # start as the base model
ALL = [*IDENTITY, "prefix", "prompt"]
MERGEABLE = ["lora", "dora", "ia3", "bitfit", "selective", "full"]
SETTINGS = {"selective": {"layers": 1}, "prefix": {"virtual_tokens": 4}, "prompt": {"virtual_tokens": 4}}
LR = {"full": 1e-2, "selective": 1e-2, "prompt": 1e-1, "ia3": 3e-1, "prefix": 2e-1}  # fast enough for a 30-step overfit


@pytest.fixture(scope="module")
def biased_dir(tmp_path_factory, tokenizer) -> str:
    """A tiny Llama with bias terms (attention and MLP), so that BitFit has something to train."""
    return save_tiny(
        tmp_path_factory.mktemp("tiny-biased"),
        LlamaConfig,
        tokenizer,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    )


def _base(path: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def _attach(path: str, method: str):
    torch.manual_seed(1)
    cfg = PeftConfig(method=method, **SETTINGS.get(method, {}))
    return attaching.attach(_base(path), cfg, quantized=False, grad_checkpointing=False, model_path=path), cfg


def _batch(tokenizer):
    enc = tokenizer(["category: shipping | order: 11111", "category: billing | order: 22222"], padding=True)
    ids, mask = torch.tensor(enc["input_ids"]), torch.tensor(enc["attention_mask"])
    return ids, mask, ids.masked_fill(mask == 0, -100)


def _logits(model, ids, mask):
    with torch.no_grad():
        return forward.logits_of(model, ids, mask)


def _train(model, tokenizer, method: str, steps: int = 30) -> list[float]:
    ids, mask, labels = _batch(tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR.get(method, 5e-2))
    model.train()
    losses = []
    for _ in range(steps):
        loss = ce_sum(forward.logits_of(model, ids, mask), labels) / int((labels[:, 1:] != -100).sum())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def _dir(method, tiny_dir, biased_dir):
    return biased_dir if method == "bitfit" else tiny_dir


@pytest.mark.parametrize("method", IDENTITY)
def test_untrained_method_is_the_base_model(method, tiny_dir, biased_dir, tokenizer):
    path = _dir(method, tiny_dir, biased_dir)
    ids, mask, _ = _batch(tokenizer)
    model, _ = _attach(path, method)
    torch.testing.assert_close(_logits(model, ids, mask), _logits(_base(path), ids, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ALL)
def test_method_learns_changes_only_its_parameters_and_round_trips(method, tiny_dir, biased_dir, tokenizer, tmp_path):
    path = _dir(method, tiny_dir, biased_dir)
    ids, mask, _ = _batch(tokenizer)
    model, cfg = _attach(path, method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = _train(model, tokenizer, method)
    assert losses[-1] < (0.8 if method == "prompt" else 0.7) * losses[0], losses  # 4 soft tokens learn slower
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    expected = {
        "lora": "lora_",
        "dora": "lora_",
        "ia3": "ia3_l",
        "adapter": "bottleneck",
        "bitfit": ".bias",
        "prefix": "prompt_encoder",
        "prompt": "prompt_encoder",
    }
    if method in expected:
        assert all(expected[method] in n for n in trainable)
    if method == "selective":  # the top block (layers=1) and the final norm; nothing in block 0
        assert trainable and not any(".layers.0." in n for n in trainable)
        assert any(".layers.1.self_attn." in n for n in trainable) and "model.norm.weight" in trainable

    model.eval()
    # The base view is the untrained base: the LwF teacher and the retention reference.
    with views.base_view(model) as base:
        torch.testing.assert_close(_logits(base, ids, mask), _logits(_base(path), ids, mask), atol=1e-5, rtol=1e-5)
    trained = _logits(model, ids, mask)
    assert not torch.allclose(trained, _logits(_base(path), ids, mask), atol=1e-4)

    saved.save(model, tmp_path / "out", cfg, path)
    assert saved.method_of(tmp_path / "out") == method
    loaded = saved.load(_base(path), tmp_path / "out").eval()
    torch.testing.assert_close(_logits(loaded, ids, mask), trained, atol=1e-5, rtol=1e-5)
    with views.base_view(loaded) as base:  # a loaded result still gives the base view
        torch.testing.assert_close(_logits(base, ids, mask), _logits(_base(path), ids, mask), atol=1e-5, rtol=1e-5)

    if method in MERGEABLE:
        merged, _, facts = merge.load_merged(str(tmp_path / "out"))
        assert facts["adapter_type"] == method
        torch.testing.assert_close(_logits(merged.eval(), ids, mask), trained, atol=1e-4, rtol=1e-4)
        assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    else:
        with pytest.raises(UserError, match=f"a {method} result adds computation .* cannot be folded"):
            merge.load_merged(str(tmp_path / "out"))


def test_full_result_is_a_plain_transformers_model(tiny_dir, tokenizer, tmp_path):
    model, cfg = _attach(tiny_dir, "full")
    _train(model, tokenizer, "full", steps=2)
    saved.save(model.eval(), tmp_path / "full", cfg, tiny_dir)
    ids, mask, _ = _batch(tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    torch.testing.assert_close(_logits(plain, ids, mask), _logits(model, ids, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["peft.method=full", "model.quantization=4bit"], "peft.method=full cannot train a 4bit base"),
        (["peft.method=selective", "model.quantization=4bit"], "cannot train the attention/MLP weights of a 4bit"),
        (["peft.method=ia3", "peft.r=4"], "peft.r is a dora/lora setting; peft.method is ia3: remove it"),
        (["peft.method=lora", "peft.virtual_tokens=8"], "peft.virtual_tokens is a prefix/prompt setting"),
        (["peft.method=prompt", "peft.prompt_init=text"], "peft.prompt_init=text needs peft.prompt_init_text"),
        (["peft.method=ia3", "peft.ia3_feedforward_modules=[mlp]"], "must be a subset of peft.ia3_target_modules"),
        (["peft.method=magic"], "peft.method"),
    ],
)
def test_impossible_combinations_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        loader.load(None, overrides)


def test_method_defaults_choose_the_learning_rate():
    assert loader.load(None, ["peft.method=full"]).lr == 2e-5
    assert loader.load(None, ["peft.method=ia3"]).lr == 3e-3
    assert loader.load(None, ["peft.method=full", "train.lr=1e-4"]).lr == 1e-4
    assert api.load_config("quickstart", ["peft.method=ia3"]).peft.method == "ia3"  # LoRA keys at defaults


def test_a_reused_config_takes_the_new_methods_learning_rate(tmp_path):
    """Defect: a Config (or a run's config.yaml) reused with another method kept the old method's
    default rate (LoRA's 2e-4 for full fine-tuning). The rate is resolved from the final method."""
    lora = api.load_config({})
    assert api.load_config(lora, ["peft.method=full"]).lr == 2e-5
    loader.dump(lora, tmp_path / "config.yaml")
    assert api.load_config(tmp_path / "config.yaml", ["peft.method=full"]).lr == 2e-5
    assert api.load_config(api.load_config({}, ["train.lr=1e-3"]), ["peft.method=full"]).lr == 1e-3  # set by hand


def test_bitfit_without_biases_points_to_selective(tiny_dir):
    with pytest.raises(UserError, match="has no bias terms .* use peft.method=selective"):
        _attach(tiny_dir, "bitfit")


def test_selective_layer_choice_is_checked(tiny_dir):
    cfg = PeftConfig(method="selective", layers=[5])
    with pytest.raises(UserError, match=r"peft.layers=\[5\]: the model has blocks 0..1"):
        attaching.attach(_base(tiny_dir), cfg, quantized=False, grad_checkpointing=False)


def test_prompt_tuning_from_text(tiny_dir, tokenizer):
    cfg = PeftConfig(method="prompt", virtual_tokens=4, prompt_init="text", prompt_init_text="Classify the ticket:")
    model = attaching.attach(_base(tiny_dir), cfg, quantized=False, grad_checkpointing=False, model_path=tiny_dir)
    ids, mask, _ = _batch(tokenizer)
    assert _logits(model, ids, mask).shape[1] == ids.shape[1]  # the virtual tokens' positions are dropped
    emb = model.get_input_embeddings().weight
    start = model.prompt_encoder["default"].embedding.weight
    text_ids = tokenizer("Classify the ticket:", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(start[0], emb[text_ids[0]])


def test_several_adapters_side_by_side_and_mixed_methods_refused(tiny_dir, tokenizer, tmp_path):
    for name in ("a", "b"):
        model, cfg = _attach(tiny_dir, "lora")
        _train(model, tokenizer, "lora", steps=2 if name == "a" else 4)
        saved.save(model, tmp_path / name, cfg, tiny_dir)
    both = saved.load_several(_base(tiny_dir), {"a": tmp_path / "a", "b": tmp_path / "b"})
    ids, mask, _ = _batch(tokenizer)
    saved.activate(both, "a")
    a = _logits(both, ids, mask)
    saved.activate(both, "b")
    assert not torch.allclose(a, _logits(both, ids, mask))
    torch.testing.assert_close(a, _logits(saved.load(_base(tiny_dir), tmp_path / "a"), ids, mask))
    model, cfg = _attach(tiny_dir, "adapter")
    saved.save(model, tmp_path / "c", cfg, tiny_dir)
    with pytest.raises(UserError, match="must be PEFT adapters of one method .* c=adapter"):
        saved.load_several(_base(tiny_dir), {"a": tmp_path / "a", "c": tmp_path / "c"})


@pytest.mark.parametrize("method", ["dora", "ia3", "adapter", "selective", "prompt", "prefix", "full"])
def test_each_method_runs_the_whole_recipe_with_forgetting_controls(method, tiny_overrides, tmp_path):
    """One config key switches the method; LwF, rehearsal, retention and the report still work."""
    overrides = [o for o in tiny_overrides if not o.startswith("peft.r=")]
    overrides += [f"peft.method={method}", "forgetting.preset=lwf", "train.max_steps=4"]
    overrides += [f"peft.{k}={v}" for k, v in SETTINGS.get(method, {}).items()]
    summary = forgetless.train({}, overrides)
    run = tmp_path / "run"
    assert summary["steps"] == 4 and summary["final"]["lwf"] >= 0
    assert saved.method_of(run / "adapter") == method
    assert 0 < summary["trainable_parameters"] <= summary["total_parameters"]
    assert json.loads((run / "eval.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("method", ["dora", "ia3", "adapter", "prompt", "bitfit"])
def test_methods_train_on_a_4bit_base(method, tiny_dir, biased_dir, tokenizer):
    """QLoRA-style: the frozen base is NF4; the method's own parameters train in full precision."""
    from forgetless.config.schema import ModelConfig
    from forgetless.model import loader as models

    path = _dir(method, tiny_dir, biased_dir)
    base, _, _ = models.load(ModelConfig(name=path, quantization="4bit", precision="fp32"))
    cfg = PeftConfig(method=method, **SETTINGS.get(method, {}))
    model = attaching.attach(base, cfg, quantized=True, grad_checkpointing=False, model_path=path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    losses = _train(model, tokenizer, method, steps=10)
    assert losses[-1] < losses[0] and trainable
    assert not any("weight" in n and p.dtype == torch.uint8 for n, p in model.named_parameters() if n in trainable)


def test_a_saved_result_is_read_whole_once_until_a_file_changes(tmp_path, monkeypatch):
    """check_readable parses each file once per process (an export finds its adapter several times),
    and still catches a file cut short after it was checked."""
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}), encoding="utf-8")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}), encoding="utf-8")
    parsed = []
    monkeypatch.setattr(saved.json, "loads", lambda text: parsed.append(text) or json.JSONDecoder().decode(text))
    saved.check_readable(tmp_path)
    saved.check_readable(tmp_path)
    assert len(parsed) == 2  # two files, each parsed once
    cut = tmp_path / "tokenizer.json"
    cut.write_text(cut.read_text(encoding="utf-8")[:-3], encoding="utf-8")
    with pytest.raises(UserError, match="tokenizer.json is damaged or incomplete"):
        saved.check_readable(tmp_path)
