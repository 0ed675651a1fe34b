"""The package's shape, checked: the rules DESIGN.md states, so that they stay true.

- every import points down the data flow (FLOW, docs/architecture.md): a folder imports only the
  folders before it, and the entry points at the package root sit above them all;
- no recipe imports another recipe (what two recipes share is a component);
- no cycle between the role folders and the entry-point modules at the package root;
- an import inside a function says why in a comment (a real cycle, or a heavy optional dependency
  kept out of start-up);
- files stay within 350 lines and functions within 50, unless a comment right above the function
  says why it is one piece (`# one piece: ...`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "forgetless"
FILES = sorted(SRC.rglob("*.py"))
RECIPES = {p.stem for p in (SRC / "recipes").glob("*.py")} - {"__init__", "runtime"}

# The data flow, lowest first: a module may import from its own node and the nodes before it. The
# helpers (errors, files) sit under everything; eval sits below recipes because every run measures
# itself before and after training; the planner reads recipes' configs; deploy serves and exports
# what recipes made; api is the one door the front ends (pipeline, ui, commands, cli) go through.
FLOW = [
    "errors", "files", "config", "model", "adapters", "data", "reference", "objectives", "training", "eval",
    "recipes", "plan", "deploy", "api", "pipeline", "ui", "commands", "cli", "__main__", "__init__",
]  # fmt: skip
MAX_FILE_LINES, MAX_FUNCTION_LINES = 350, 50


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


def against_the_flow(path: Path, node: str) -> list[str]:
    """`path`'s imports that point up the flow from `node` (or at a node FLOW does not place)."""
    rank = FLOW.index(node)
    return [
        f"{path.name}:{line} ({node}) imports {mod} ({node_of(mod)})"
        for mod, line, _ in imports(path)
        if node_of(mod) not in FLOW or FLOW.index(node_of(mod)) > rank
    ]


def test_every_import_points_down_the_flow():
    nodes = {node_of(module_of(p)) for p in FILES}
    assert nodes <= set(FLOW), f"place these in FLOW (and docs/architecture.md): {sorted(nodes - set(FLOW))}"
    found = [f"{p.relative_to(SRC)}: {x}" for p in FILES for x in against_the_flow(p, node_of(module_of(p)))]
    assert not found, "imports against the data flow (move the piece down, or the caller up):\n" + "\n".join(found)


def test_the_flow_check_sees_a_planted_violation(tmp_path):
    """A model/ module that imports data/ (the chat templates' old home) is refused; one that imports
    config/ is not; a TYPE_CHECKING-only import does not count."""
    f = tmp_path / "loader.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nfrom forgetless.config.schema import ModelConfig\n"
        "from forgetless.data.render import encode\n"
        "if TYPE_CHECKING:\n    from forgetless.training.loop import fit\n",
        encoding="utf-8",
    )
    assert against_the_flow(f, "model") == ["loader.py:3 (model) imports forgetless.data.render (data)"]
    assert against_the_flow(f, "data") == []


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


def long_functions(path: Path) -> list[str]:
    """Functions over MAX_FUNCTION_LINES without a `# one piece:` comment right above them (or their decorators)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for f in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = (f.end_lineno or f.lineno) - f.lineno + 1
            top = min([f.lineno, *(d.lineno for d in f.decorator_list)])
            said = any(line.strip().startswith("# one piece:") for line in lines[max(0, top - 3) : top - 1])
            if n > MAX_FUNCTION_LINES and not said:
                found.append(f"{path.name}:{f.lineno} {f.name} ({n} lines)")
    return found


def test_sizes():
    big_files = [
        f"{p.relative_to(SRC)} ({n} lines)"
        for p in FILES
        if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_FILE_LINES
    ]
    long = [x for p in FILES for x in long_functions(p)]
    assert not big_files and not long, "\n".join(big_files + long)


def test_the_size_check_sees_a_long_function_and_its_reason(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    f = tmp_path / "m.py"
    f.write_text(f"def long():\n{body}\n\n# one piece: a reason\ndef said():\n{body}", encoding="utf-8")
    assert long_functions(f) == [f"m.py:1 long ({MAX_FUNCTION_LINES + 1} lines)"]


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


def test_the_architecture_doc_matches_the_tree():
    """docs/architecture.md's tree names every module of every folder, in FLOW's order, and no other."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = doc.split("```")[1]
    listed: dict[str, set[str]] = {}
    order = []
    for line in tree.splitlines():
        m = re.match(r"\s+(\w+)/\s{2,}(.*)", line)
        if m:
            order.append(m.group(1))
            listed[m.group(1)] = set(re.findall(r"\w+", m.group(2)))
    for folder, names in listed.items():
        stems = {p.stem for p in (SRC / folder).glob("*.py")} - {"__init__"}
        assert stems <= names, f"docs/architecture.md: {folder}/ lacks {sorted(stems - names)}"
        assert folder in FLOW, folder
    assert order == [n for n in FLOW if n in listed], f"the tree's order {order} is not FLOW's"
    roots = {p.stem for p in SRC.glob("*.py")} - {"__init__", "__main__"}
    assert all(f"{r}.py" in tree for r in roots), sorted(r for r in roots if f"{r}.py" not in tree)
