"""Reading the text files users hand us (configs, data, gates): UTF-8 with or without a BOM, and YAML
whose duplicate keys are errors. Every failure is a UserError that names the file and line.

And writing every file the program leaves: to a temporary name beside the target, renamed into place
(`write_text`, `write_json`, `replacing`), so a crash, a kill or a full disk never leaves half a file
under the final name; a full disk is a UserError that names the path and keeps the previous file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
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
        elif isinstance(
            node, yaml.SequenceNode
        ):  # items are keyed by position: `- kind: a` `- kind: b` is no duplicate
            for i, item in enumerate(node.value):
                lines[(*prefix, str(i))] = item.start_mark.line + 1
                walk(item, (*prefix, str(i)))

    walk(node, ())
    return tree, lines


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text as its reader numbers them: split on "\n" alone. str.splitlines also
    splits on U+2028, U+2029, U+0085 and other separators that JSON strings may hold raw (and
    json.dumps(ensure_ascii=False) writes raw), which would shift every later line number."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_jsonl_records(path: Path) -> list[dict]:
    """The JSON objects of a log that is appended to while it is read (metrics.jsonl): a last line
    without its newline is a write in progress and is left out; any other bad line is an error."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = jsonl_lines(text)
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) and not text.endswith("\n"):
                break  # being written right now
            raise UserError(f"{path}:{n}: not a JSON line; the file is damaged (remove the line)") from None
    return out


def _no_space(e: OSError, path: Path) -> UserError | None:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"no space left on the device writing {path}; free space and run again "
            f"(any earlier {path.name} is unchanged)"
        )
    return None


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.tmp")


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """A temporary path to write a file or a folder to; it replaces `path` when the block ends without
    an error, and is removed when it raises. A folder that exists is moved aside first and removed
    after the new one is in place (two renames: at no moment is there a half-written folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            aside = _tmp_name(path)
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        full = _no_space(e, path)
        if full is None:
            raise
        raise full from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: Path | str, text: str) -> Path:
    """`path` holds `text` (UTF-8), whole or not at all."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path | str, value: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(value, ensure_ascii=False, indent=indent) + ("\n" if indent else ""))
