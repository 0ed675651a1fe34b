"""The package's shape, checked: the rules DESIGN.md states, so that they stay true.

- no recipe imports another recipe (what two recipes share is a component);
- no cycle between the role folders (config, model, adapters, data, reference, objectives, training,
  recipes, eval, plan, deploy) and the entry-point modules at the package root;
- an import inside a function says why in a comment (a real cycle, or a heavy optional dependency
  kept out of start-up);
- files stay under 400 lines and functions under 60.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "forgetless"
FILES = sorted(SRC.rglob("*.py"))
RECIPES = {p.stem for p in (SRC / "recipes").glob("*.py")} - {"__init__", "runtime"}


def node_of(module: str) -> str:
    """The layout node of a dotted forgetless module: its role folder, or the root module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported forgetless module, line, inside a function) for every runtime import of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    inside = {
        n.lineno
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    out = []
    for n in ast.walk(tree):
        if n.lineno in skip if hasattr(n, "lineno") else True:
            continue
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("forgetless"):
            for alias in n.names:  # `from forgetless.recipes import sft` imports the module recipes.sft
                sub = f"{n.module}.{alias.name}"
                known = (SRC.parent / sub.replace(".", "/")).with_suffix(".py").is_file()
                out.append((sub if known else n.module, n.lineno, n.lineno in inside))
        elif isinstance(n, ast.Import):
            out += [(a.name, n.lineno, n.lineno in inside) for a in n.names if a.name.startswith("forgetless")]
    return out


def test_no_recipe_imports_another_recipe():
    found = [
        f"{p.relative_to(SRC)}:{line} imports {mod}"
        for p in (SRC / "recipes").glob("*.py")
        for mod, line, _ in imports(p)
        if mod.startswith("forgetless.recipes.") and mod.split(".")[2] in RECIPES
    ]
    assert not found, "recipes import each other (move the shared piece into a component):\n" + "\n".join(found)


def folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for p in FILES:
        src = node_of(module_of(p))
        for mod, _, _ in imports(p):
            dst = node_of(mod)
            if dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def test_no_cycle_between_folders():
    graph = folder_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*path[path.index(m) :], m]
            if m not in state and (cycle := visit(m)):
                return cycle
        state[n] = 2
        path.pop()
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            pytest.fail("folder-level import cycle: " + " -> ".join(cycle))


def test_imports_inside_functions_say_why():
    silent = []
    for p in FILES:
        lines = p.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(f):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    here, above = lines[n.lineno - 1], lines[n.lineno - 2] if n.lineno > 1 else ""
                    if "#" not in here and not above.strip().startswith("#"):
                        silent.append(f"{p.relative_to(SRC)}:{n.lineno}: {here.strip()}")
    assert not silent, "imports inside functions without a reason:\n" + "\n".join(silent)


def test_sizes():
    big_files, long_functions = [], []
    for p in FILES:
        text = p.read_text(encoding="utf-8")
        if text.count("\n") > 400:
            big_files.append(f"{p.relative_to(SRC)} ({text.count(chr(10))} lines)")
        for f in ast.walk(ast.parse(text)):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (f.end_lineno or f.lineno) - f.lineno + 1
                if n > 60:
                    long_functions.append(f"{p.relative_to(SRC)}:{f.lineno} {f.name} ({n} lines)")
    assert not big_files and not long_functions, "\n".join(big_files + long_functions)


def test_the_checks_see_a_planted_violation(tmp_path):
    """The import scanner finds a recipe-to-recipe import, and skips TYPE_CHECKING-only ones."""
    f = tmp_path / "x.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nfrom forgetless.recipes import sft\n"
        "if TYPE_CHECKING:\n    from forgetless.reference.topk import TeacherCache\n"
        "def g():\n    from forgetless.recipes.dpo import run\n",
        encoding="utf-8",
    )
    found = imports(f)
    assert ("forgetless.recipes.sft", 2, False) in found
    assert ("forgetless.recipes.dpo", 6, True) in found
    assert not any("topk" in m for m, _, _ in found)


def test_one_definition_of_the_ignored_label_and_of_the_main_process():
    """Defects: IGNORE = -100 was defined twice and written as a literal twice; the main process was
    detected two ways (the RANK variable in the CLI, distributed.is_main() elsewhere)."""
    literal = [
        f"{p.relative_to(SRC)}:{i}"
        for p in FILES
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"(?<![\w.])-100(?!\d)", line.split("#")[0])  # -100, not 0-100 or 20-100
    ]
    assert [x.split(":")[0] for x in literal] == ["model/likelihood.py"], literal
    rank = [str(p.relative_to(SRC)) for p in FILES if '"RANK"' in p.read_text(encoding="utf-8")]
    assert rank == [], f"detect the main process with training.distributed.is_main(): {rank}"
