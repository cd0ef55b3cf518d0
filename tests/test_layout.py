"""The house stays readable (issue 20): the engine's layers import only downwards, with no cycle; segdemo's root
holds only shared helpers and entry points; no UI file and no function grows past what a reader can hold.

Imports are read from the source (every `import`, at module level or inside a function), so a lazy import
that runs upwards counts as much as one at the top of a file."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "segdemo"

# Bottom to top. A module may import from its own layer or any below it, never from one above.
LAYERS = ("helpers", "data", "core", "training", "export", "server", "ui", "entry")
ENTRY = {"cli", "__main__"}
MAX_ROOT_MODULES = 12
MAX_UI_LINES = 600
MAX_FUNCTION_LINES = 80
# Declarations, not logic: the CLI's argparse table. Layout declarations in the tabs are split by section.
LONG_ALLOWED = {("segdemo/cli.py", "_parser")}


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(PKG.rglob("*.py"))
        if "scripts" not in p.relative_to(PKG).parts  # export/scripts: standalone files that never import segdemo
    }


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return LAYERS.index("helpers")  # the package itself: its version only
    if len(parts) == 2 and parts[1] in ENTRY:
        return LAYERS.index("entry")
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    assert len(parts) == 2, f"{module}: a sub-package not in the layer table; add it to LAYERS"
    return LAYERS.index("helpers")


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The segdemo modules a file imports (`from segdemo.x import y` counts y when y is a module)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("segdemo")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("segdemo"):
                continue
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in out if m in known and m != module}


def test_no_module_imports_one_above_it():
    mods = _modules()
    upward = [
        f"{m} ({LAYERS[_layer(m)]}) imports {dep} ({LAYERS[_layer(dep)]})"
        for m, p in mods.items()
        for dep in sorted(_imports(p, m, set(mods)))
        if _layer(dep) > _layer(m)
    ]
    assert not upward, "imports that run upwards:\n" + "\n".join(upward)


def test_no_import_cycles():
    mods = _modules()
    graph = {m: _imports(p, m, set(mods)) - {"segdemo"} for m, p in mods.items()}  # the version only
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d) :] + [m, d]) if d in path else f"{m} -> {d}")
            elif d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_root_holds_only_helpers_and_entry_points():
    root = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at segdemo's root: {root}"


def test_no_ui_file_is_too_long():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (PKG / "ui").glob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_UI_LINES
    }
    assert not long, f"over {MAX_UI_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = []
    for p in sorted(PKG.rglob("*.py")):
        rel = str(p.relative_to(ROOT))
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (rel, node.name) not in LONG_ALLOWED:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel}: {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
