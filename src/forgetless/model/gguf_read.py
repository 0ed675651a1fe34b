"""Read a GGUF file once while transformers converts it.

Converting the embedded model (loader._convert_gguf) took ~18 s on a 2-core AVX-512 VM, most of it
outside the dequantization: transformers builds a `gguf.GGUFReader` (which parses every
metadata field, 49k vocabulary strings included) once for the config, once for the tokenizer and once
for the weights, and calls `gguf.get_tensor_name_map(arch, layers)` once per module of the model (397
times for SmolLM2) to name the tensors. Both give the same answer for the same arguments, so while
`read_once()` is open they are memoized (~9 s, the same files byte for byte: tests/model/test_loader.py);
outside it gguf is untouched. The reader it makes also slices a plain array over the file's pages
(`plain_view`), not gguf's `np.memmap`: 3.4× faster to parse the same fields.

transformers imports both names from gguf inside its functions (`from gguf import GGUFReader`) at every
call, which is what lets this swap reach them without changing transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    import gguf  # optional at import time: only a GGUF conversion needs it (a dependency of the package)

    readers: dict = {}
    name_maps: dict = {}
    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path, mode: str = "r"):
        # Read-only (mode "r", the default that transformers uses) readers map the file and never write
        # it, so one per path can serve every caller; other modes are passed through.
        if mode != "r":
            return real_reader(path, mode)
        key = str(path)
        if key not in readers:
            readers[key] = plain_view(real_reader)(path)
        return readers[key]

    def name_map(arch, n_blocks):
        if (arch, n_blocks) not in name_maps:
            name_maps[arch, n_blocks] = real_name_map(arch, n_blocks)
        return name_maps[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map


def plain_view(reader_class):
    """`reader_class` (gguf's GGUFReader) reading through a plain ndarray view of its `np.memmap`. The reader
    slices the file once per metadata value (98k of them for the vocabulary's strings and merges), and each
    slice of a memmap runs numpy's Python-level `memmap.__array_finalize__`: 6.4 s against 1.9 s for the
    embedded model's file on a 2-core AVX2 VM (benchmarks/gguf_convert.py). The view reads the same mapped
    pages (the memmap stays alive as its base), read-only as before."""

    class PlainView(reader_class):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mapped):
            self._plain = mapped.view(np.ndarray)

    return PlainView
