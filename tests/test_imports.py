"""The package's import structure: inference never needs training code, no
import cycles, and a light command line start."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"crossfunctional": REPO / "src" / "crossfunctional", "crossfunctional.calculators": REPO / "calculators"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if name.startswith("crossfunctional.calculators") and package == "crossfunctional":
                continue
            out[name] = path
    return out


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    is_package = path.name == "__init__.py"
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("crossfunctional")}


def test_models_and_calculators_do_not_import_training_workflows_or_cli():
    modules = _modules()
    forbidden = ("crossfunctional.transfer", "crossfunctional.workflows", "crossfunctional.cli")
    bad = []
    for name, path in modules.items():
        if name.startswith(("crossfunctional.models", "crossfunctional.calculators")):
            for imported in _imports(path, name, top_level_only=False):
                if imported.startswith(forbidden):
                    bad.append(f"{name} imports {imported}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_at_module_level():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(path, name, top_level_only=True):
            # "from package import name" names a module or an attribute: keep the longest module prefix
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                deps.add(imported)
        graph[name] = deps
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_predict_help_loads_no_training_phonopy_or_lammps():
    code = (
        "import sys\n"
        "from crossfunctional.cli import main\n"
        "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('crossfunctional.transfer', 'phonopy', 'lammps', 'chgnet.trainer', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
