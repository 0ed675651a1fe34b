"""Read training files and turn every row into a validated conversation.

Files: .jsonl, .json (a list of objects), .csv, .parquet, or a directory saved by
`datasets.Dataset.save_to_disk`. Row formats (detected per file from the first row's keys,
or forced with data.format):

    instruction  {"instruction": str, "input": str (optional), "output": str, "system": str (optional)}
    pair         {"input": str, "output": str}
    chat         {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
    text         {"text": str}                      (plain language modelling, loss on every token)

A bad row raises UserError naming file:line and the field, or is skipped and counted when
data.on_error is "skip". Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from forgetless.errors import UserError
from forgetless.files import read_text

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One training row: a conversation (chat/instruction/pair) or plain text, with its origin."""

    where: str  # "file:line" for error messages and reports
    messages: tuple[dict, ...] = ()
    text: str | None = None


@dataclass
class ReadReport:
    rows: int = 0
    skipped: list[str] = field(default_factory=list)  # one "file:line: reason" per skipped row


class RowError(ValueError):
    """A row-level problem; the reader adds file:line and decides raise vs skip."""


def builtin_path(name: str) -> Path:
    path = Path(str(resources.files("forgetless") / "assets" / name))
    if not path.exists():
        raise UserError(f"builtin:{name} does not exist; shipped files live in forgetless/assets")
    return path


def resolve_path(ref: str) -> Path:
    path = builtin_path(ref.removeprefix("builtin:")) if ref.startswith("builtin:") else Path(ref)
    if not path.exists():
        raise UserError(f"data file not found: {ref}")
    return path


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    # Bytes, decoded line by line: a line that is not UTF-8 is one bad row (skippable), not a crash.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM is read, not rejected
            except UnicodeDecodeError as e:
                bad = f"byte {raw[e.start]:#04x} at column {e.start + 1}"
                yield lineno, RowError(f"not valid UTF-8 ({bad}); save the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, RowError(f"malformed JSON ({e.msg} at column {e.colno})")


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); a .json file must hold a list of rows") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: a .json file must hold a list of row objects (or use .jsonl, one per line)")
    yield from enumerate(data, start=1)  # "line" is the row number here


def _iter_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row:
                yield reader.line_num, RowError("more cells than header columns")
                continue
            yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}


def _iter_table(rows: Any) -> Iterator[tuple[int, Any]]:
    for i, row in enumerate(rows, start=1):
        yield i, {k: v for k, v in row.items() if v is not None}


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    if path.is_dir():
        from datasets import load_from_disk  # slow to import; only for saved HF datasets

        try:
            ds = load_from_disk(str(path))
        except Exception as e:
            raise UserError(f"{path}: not a saved Hugging Face dataset ({e})") from None
        yield from _iter_table(ds)
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix == ".csv":
        yield from _iter_csv(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # only for .parquet files

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:160]})") from None
        yield from _iter_table(table.to_pylist())
    else:
        raise UserError(f"{path}: unsupported file type '{suffix}'; use .jsonl, .json, .csv, .parquet or a dataset dir")


def detect_format(row: Any) -> str:
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    keys = set(row)
    if "messages" in keys:
        return "chat"
    if "instruction" in keys:
        return "instruction"
    if {"input", "output"} <= keys:
        return "pair"
    if "text" in keys:
        return "text"
    raise RowError(
        f"cannot tell the format from keys {sorted(keys)}; expected instruction+output, input+output, "
        "messages or text (or set data.format)"
    )


def _text(row: dict, key: str, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            raise RowError(f"field '{key}' is {'missing' if key not in row else 'null'}")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"field '{key}' is empty")
    return value


def _check_chat(messages: Any) -> tuple[dict, ...]:
    if isinstance(messages, str):  # CSV cells and some exports hold the list as a JSON string
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise RowError("field 'messages' is a string that is not a JSON list") from None
    if not isinstance(messages, list) or not messages:
        raise RowError("field 'messages' must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise RowError(f"messages[{i}].role is '{role}'; allowed: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RowError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise RowError(f"messages[{i}].content is empty")
        out.append({"role": role, "content": content})
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            idx = i + (len(out) - len(turns))
            raise RowError(
                f"messages[{idx}].role is '{m['role']}' but '{expected}' was expected (after an optional "
                "system message, turns alternate user, assistant, ...)"
            )
    if not turns or turns[-1]["role"] != "assistant":
        raise RowError("the conversation must end with an assistant message (it is what the model learns)")
    return tuple(out)


def to_example(row: Any, fmt: str, where: str) -> Example:
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if fmt == "chat":
        if "messages" not in row:
            raise RowError("field 'messages' is missing")
        return Example(where, messages=_check_chat(row["messages"]))
    if fmt == "text":
        return Example(where, text=_text(row, "text"))
    if fmt == "instruction":
        prompt = _text(row, "instruction")
        extra = _text(row, "input", required=False)
        user = f"{prompt}\n\n{extra}" if extra.strip() else prompt
    else:  # pair
        user = _text(row, "input")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]
    system = _text(row, "system", required=False)
    if system.strip():
        messages.insert(0, {"role": "system", "content": system})
    return Example(where, messages=tuple(messages))


def read_file(ref: str, fmt: str = "auto", on_error: str = "raise", report: ReadReport | None = None) -> list[Example]:
    """All valid rows of one file; bad rows raise or are recorded in `report.skipped`."""
    path = resolve_path(ref)
    report = report if report is not None else ReadReport()
    examples: list[Example] = []
    file_fmt = None if fmt == "auto" else fmt
    for line, row in iter_rows(path):
        where = f"{path}:{line}"
        report.rows += 1
        try:
            if isinstance(row, RowError):
                raise row
            file_fmt = file_fmt or detect_format(row)
            examples.append(to_example(row, file_fmt, where))
        except RowError as e:
            if on_error == "raise":
                raise UserError(f"{where}: {e} (fix the row, or set data.on_error=skip to skip bad rows)") from None
            report.skipped.append(f"{where}: {e}")
    if report.rows == 0:
        raise UserError(f"{path}: the file has no rows")
    if not examples:
        raise UserError(f"{path}: every row is invalid; first problem: {report.skipped[0]}")
    return examples


def _prompt_of(row: Any) -> tuple[dict, ...]:
    """The conversation up to the last user turn; any final answer in the row is ignored."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        msgs = list(row["messages"]) if isinstance(row["messages"], list) else row["messages"]
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "user":
            msgs = msgs + [{"role": "assistant", "content": "-"}]  # validate as a full conversation
        return _check_chat(msgs)[:-1]
    for key in ("instruction", "input", "prompt"):
        if key in row:
            user = _text(row, key)
            if key == "instruction" and _text(row, "input", required=False).strip():
                user = f"{user}\n\n{row['input']}"
            return ({"role": "user", "content": user},)
    raise RowError(f"cannot find a prompt in keys {sorted(row)}; expected instruction, input, prompt or messages")


def read_prompts(ref: str) -> list[tuple[str, tuple[dict, ...]]]:
    """(where, conversation ending with a user turn) for every row of a prompt file.

    Prompt files are task files whose answers are optional (instruction / pair / chat rows, or
    {"prompt": ...}); they feed self-rehearsal and the retention suite, so a bad row is an error.
    """
    path = resolve_path(ref)
    out = []
    for line, row in iter_rows(path):
        where = f"{path}:{line}"
        try:
            if isinstance(row, RowError):
                raise row
            out.append((where, _prompt_of(row)))
        except RowError as e:
            raise UserError(f"{where}: {e}") from None
    if not out:
        raise UserError(f"{path}: the file has no rows")
    return out
