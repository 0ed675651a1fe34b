"""Reading the text files users hand us (configs, data, gates): UTF-8 with or without a BOM, and YAML
whose duplicate keys are errors. Every failure is a UserError that names the file and line."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from forgetless.errors import UserError


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_text(path: Path) -> str:
    """A whole text file as UTF-8 (a leading BOM is dropped); a file that is not UTF-8 is a UserError
    naming the line of the first bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {data[e.start]:#04x}); save the file as UTF-8") from None


def read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The YAML document of `path` and the 1-based line of each key path (for error messages).
    A key given twice in one mapping is an error (YAML loaders silently keep the last one)."""
    text = read_text(path)
    try:
        node = yaml.compose(text)
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise UserError(
                        f"{path}:{line}: duplicate key '{'.'.join(key)}' (also at line {lines[key]}); keep one"
                    )
                lines[key] = line
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, prefix)

    walk(node, ())
    return tree, lines
