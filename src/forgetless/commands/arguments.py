"""What several subcommands' parsers share: --debug after the subcommand, the `[CONFIG] KEY=VALUE`
items, and the few value types argparse checks for them."""

from __future__ import annotations

import argparse
from pathlib import Path

from forgetless.errors import UserError

# --debug is accepted after the subcommand too; SUPPRESS keeps the top-level value when it is absent there.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def subcommand(sub, name: str, what: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, parents=[COMMON], help=what)


def config_items(
    p: argparse.ArgumentParser,
    what: str = "config file or shipped recipe name, then dotted overrides",
    metavar: str = "[CONFIG] KEY=VALUE",
) -> None:
    """The config and its `key=value` overrides, in any order with the options (cli.parse)."""
    p.add_argument("items", nargs="*", metavar=metavar, help=what)


def config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    items = list(items)
    path = items.pop(0) if items and "=" not in items[0] else None
    return path, items


def run_dir(ref: str, advice: str = "") -> Path:
    if not (Path(ref) / "config.yaml").is_file():
        raise UserError(f"{ref} is not a run directory (no config.yaml){advice}")
    return Path(ref)


def scales(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: comma-separated scales, e.g. 0.25,0.5,0.75,1") from None


def gigabytes(text: str) -> float:
    try:
        return float(text.strip().upper().removesuffix("GB").removesuffix("G"))
    except ValueError:
        raise UserError(f"--gpu-memory {text}: give a size such as 8GB or 24") from None
