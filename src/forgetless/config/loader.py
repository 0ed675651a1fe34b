"""Typed, validated, frozen run configuration: YAML file + dotted `key=value` overrides.

Every section (schema.py and the files it imports) is a pydantic model with `extra="forbid"`, so a
typo is an error with a "did you mean" instead of a silently ignored setting. Defaults come from the
literature and the field descriptions cite it; `forgetless train --help-config` prints them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from forgetless import files
from forgetless.config.fields import OWN_ANSWERS, TEMPLATE_NAMES, is_path
from forgetless.config.schema import Config
from forgetless.errors import UserError
from forgetless.files import read_yaml


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """`a.b=1 c=x` -> nested dict; values are parsed as YAML scalars (1e-4 and true work)."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' is not key=value (for example train.lr=1e-4)")
        # YAML scalars: 3 -> int, true -> bool; "1e-4" stays a string that pydantic's
        # lax mode turns into a float for float fields.
        value = yaml.safe_load(raw) if raw else ""
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not _is_section(field.annotation):
            return []
        model = field.annotation
    return list(model.model_fields)


def _explain(err: dict, where: dict[tuple[str, ...], int], source: str, typed: dict[tuple[str, ...], str]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc)
    # a list item (eval.labels.0) has no place of its own: the nearest enclosing key's
    given = next((typed[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in typed), None)
    line = next((where[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in where), None)
    if given is not None:
        place = f"command line '{given}': "
    else:
        place = f"{source}:{line}: " if line else (f"{source}: " if source else "")
    if err["type"] == "extra_forbidden":
        fields = _section_fields(loc)
        # close spelling first, then abbreviations such as rank -> r
        guess = difflib.get_close_matches(loc[-1], fields, n=1) or [f for f in fields if loc[-1].startswith(f)][:1]
        hint = f"; did you mean '{'.'.join(loc[:-1] + (guess[0],))}'?" if guess else ""
        return f"{place}unknown key '{key}'{hint}"
    if err["type"] == "value_error":  # our own cross-field checks already name the key
        return f"{place}{err['msg'].removeprefix('Value error, ')}"
    if err["type"] == "string_type" and isinstance(err.get("input"), bool):
        return (
            f"{place}{key}: got the boolean {err['input']}: yes/no, on/off and true/false are booleans in YAML; "
            "quote them ('yes') to mean the text"
        )
    return f"{place}{key}: {err['msg']} (got {err.get('input')!r})"


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional) and overrides into a frozen Config; raise UserError on bad input."""
    tree: dict = {}
    where: dict[tuple[str, ...], int] = {}
    source = ""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        tree, where = read_yaml(path)
        tree = tree or {}
        if not isinstance(tree, dict):
            raise UserError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
        source = str(path)
        tree = _resolve_paths(tree, path.parent)
    return validate(tree, overrides, where, source)


def validate(tree: dict, overrides: list[str] | None = None, where: dict | None = None, source: str = "") -> Config:
    """A Config from nested dicts plus `key=value` overrides; UserError names every bad key, and where
    it was set: file:line, or the command line for an override (which wins over the file)."""
    tree = _merge(tree, parse_overrides(overrides or []))
    typed = {tuple(item.partition("=")[0].split(".")): item for item in overrides or []}
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise UserError("; ".join(_explain(err, where or {}, source, typed) for err in e.errors())) from None


def path_keys(model: type[BaseModel] = Config, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key the schema marks as a file path (`fields.path_field`), as a key path."""
    out = []
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            out += path_keys(field.annotation, (*prefix, name))
        elif is_path(field):
            out.append((*prefix, name))
    return out


def _resolve_paths(tree: dict, base: Path) -> dict:
    """Relative paths in a YAML file are relative to that file, not to the current dir."""
    for keys in path_keys():
        node = tree
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or keys[-1] not in node:
            continue
        value = node[keys[-1]]
        fixed = [_rel(p, base) for p in value] if isinstance(value, list) else _rel(value, base)
        tree = _merge(tree, _nest(keys, fixed))
    return tree


def _nest(keys: tuple[str, ...], value: Any) -> dict:
    for k in reversed(keys):
        value = {k: value}
    return value


def _rel(p: Any, base: Path) -> Any:
    if (
        not isinstance(p, str)
        or p in (*OWN_ANSWERS, *TEMPLATE_NAMES)
        or p.startswith("builtin:")
        or Path(p).is_absolute()
    ):
        return p
    return str((base / p).resolve())


def flat(tree: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1}: dotted keys, as overrides and messages name them."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def dump(cfg: Config, path: Path) -> None:
    """config.yaml of a run. Paths a YAML file gave are already absolute; those still relative came from
    the command line, relative to the current directory: written absolute, so the run's config.yaml
    means the same files when read back (--resume, eval --run, an earlier run of --continue-from)."""
    files.write_text(path, yaml.safe_dump(absolute(cfg), sort_keys=False))


def absolute(cfg: Config) -> dict:
    """The config as a tree with every relative path made absolute against the current directory."""
    return _resolve_paths(cfg.model_dump(mode="json"), Path.cwd())


def describe(model: type[BaseModel] = Config, prefix: str = "") -> str:
    """Every key with its default and help text, for `forgetless train --help-config`."""
    out = []
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            out.append(describe(field.annotation, f"{prefix}{name}."))
        else:
            default = field.default_factory() if field.default_factory else field.default
            out.append(f"{prefix}{name} = {default!r}\n    {field.description}")
    return "\n".join(out)
