"""The batcher's key/value cache with room to grow: the same keys, values and logits as transformers' own."""

import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer

from forgetless.deploy.kv_room import RoomyLayer, cache_of, roomy


def test_updates_past_the_room_give_what_concatenation_gives():
    torch.manual_seed(0)
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    ours, theirs = RoomyLayer(keys, values, room=3), DynamicLayer()
    theirs.update(keys, values)
    grown = []
    for width in (1, 1, 2, 1, 4, 4):  # past the first 3 spare positions, then past the grown buffer's
        k, v = torch.randn(2, 3, width, 4), torch.randn(2, 3, width, 4)
        got, want = ours.update(k, v), theirs.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert ours.get_seq_length() == theirs.get_seq_length()
        grown.append(ours._k.shape[-2])
    assert grown == [8, 8, 16, 16, 16, 32]  # 5 + 3; full at 9: 7 filled + 9; full at 18: 14 + 18
    before = ours.keys.clone()
    ours.update(torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4))  # a write into the room ...
    assert torch.equal(ours.keys[..., :-1, :], before)  # ... leaves the filled positions as they were


def test_a_decoding_step_on_roomy_layers_equals_one_on_a_dynamic_cache(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ids = torch.tensor([[5, 9, 13, 2, 7, 11], [3, 4, 8, 6, 10, 12]])
    with torch.no_grad():
        first = DynamicCache()
        model(input_ids=ids, past_key_values=first, use_cache=True)
        kv = [(layer.keys, layer.values) for layer in first.layers]
        layers = roomy(kv)
        for token in (14, 15, 16):  # three steps, each on both caches
            step = torch.tensor([[token], [token + 1]])
            want = model(input_ids=step, past_key_values=first, use_cache=True).logits
            got = model(input_ids=step, past_key_values=cache_of(layers), use_cache=True).logits
            assert torch.allclose(got, want, atol=1e-6)
    assert [layer.get_seq_length() for layer in layers] == [9] * len(layers)
    assert torch.equal(layers[0].keys, first.layers[0].keys)
