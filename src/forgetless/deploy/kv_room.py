"""The running batch's key/value cache, with room to grow in place.

transformers' DynamicLayer concatenates at every update, and a DynamicCache built from tensors
(`ddp_cache_data`) concatenates them once more onto an empty one: a decoding step copied every layer's
whole cache twice to add one position (`aten::cat` took 7-13% of the steps' CPU time in `python
benchmarks/serve_step.py --profile` on the embedded model, and more as answers grow). Here each layer's
keys and values live in a buffer with spare positions; a step writes its new position into the spare room
and the model reads a view of the filled part. The buffer is reallocated, with more room, only when it is
full; rows joining or leaving the batch (rarer than steps) make new buffers.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ROOM = 64  # spare positions given to a new buffer; a full one grows by at least as many as it holds


class RoomyLayer(DynamicLayer):
    """One layer's keys and values, [rows, heads, positions, dim], as views of a buffer with spare positions."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int = ROOM):
        super().__init__()
        self.device, self.filled, self.is_initialized = keys.device, keys.shape[-2], True
        self._k, self._v = _with_room(keys, room), _with_room(values, room)
        self._views()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.filled + key_states.shape[-2]
        if end > self._k.shape[-2]:  # full: a new buffer with at least as much room again as is filled
            self._k, self._v = _with_room(self.keys, end), _with_room(self.values, end)
        self._k[..., self.filled : end, :].copy_(key_states)
        self._v[..., self.filled : end, :].copy_(value_states)
        self.filled = end
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys, self.values = self._k[..., : self.filled, :], self._v[..., : self.filled, :]


def _with_room(t: torch.Tensor, room: int) -> torch.Tensor:
    out = t.new_empty(*t.shape[:-2], t.shape[-2] + room, t.shape[-1])
    out[..., : t.shape[-2], :].copy_(t)
    return out


def roomy(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> list[RoomyLayer]:
    return [RoomyLayer(k, v) for k, v in kv]


def tensors(layers: list[RoomyLayer]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The filled part of each layer (views: index or copy them before the layers change)."""
    return [(layer.keys, layer.values) for layer in layers]


def cache_of(layers: list[RoomyLayer]) -> DynamicCache:
    """A DynamicCache over these layers as they are (nothing copied): the model's update writes into them."""
    cache = DynamicCache()
    cache.layers, cache.layer_class_to_replicate = layers, None
    return cache
