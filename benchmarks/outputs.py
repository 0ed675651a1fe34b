"""How benchmarks write what they measured: every file whole or not at all (forgetless.files: a
temporary name renamed into place), charts included, the marked section of a docs page that quotes a
benchmark's table replaced without touching the rest of the page, and a number over seeds as mean ± sd.

Imported by every benchmark that writes a file.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from forgetless.files import read_text, replacing, write_json, write_text

__all__ = ["fill_section", "mean_sd", "save_figure", "write_json", "write_jsonl", "write_text"]


def write_jsonl(path: Path | str, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def save_figure(fig, path: Path | str, dpi: int = 110) -> Path:
    """Save a matplotlib figure (its format from `path`'s suffix) and close it."""
    import matplotlib.pyplot as plt  # the caller has chosen the backend already

    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip("."))
    plt.close(fig)
    return Path(path)


def fill_section(page: Path | str, begin: str, text: str, end: str | None = None) -> Path:
    """`page` with what lies between the markers `begin` and `end` (default: `begin` again) replaced by
    `text`; a page without them (or no page yet) gets the section appended."""
    end = end or begin
    page = Path(page)
    old = read_text(page) if page.exists() else ""
    section = f"{begin}\n{text.rstrip()}\n{end}"
    head, found, rest = old.partition(begin)
    if found and end in rest:
        return write_text(page, head + section + rest.partition(end)[2])
    return write_text(page, old + ("\n" if old and not old.endswith("\n") else "") + section + "\n")


def mean_sd(values: list[float], spec: str = ".3f", unit: str = "") -> str:
    """Values over seeds as a table cell: "mean ± sd", the one value alone, or – for none."""
    if len(values) < 2:
        return f"{values[0]:{spec}}{unit}" if values else "–"
    return f"{statistics.mean(values):{spec}}{unit} ± {statistics.stdev(values):{spec.lstrip('+')}}{unit}"
