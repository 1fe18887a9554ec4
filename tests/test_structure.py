"""The shape of the code base: four layers that import only downwards (model core, search,
calibration, app), no import cycles, imports at the top of modules (except optional heavy
dependencies), and the code clean under the project's ruff configuration."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "jaxplan"
CORE = {"errors", "specs", "traffic", "params", "layouts", "cost", "energy", "serving", "openloop"}
SEARCH = {"sweep", "sensitivity", "codesign", "stream", "opensweep", "simulate"}
APP = {"report", "cli", "__init__"}
# what each layer may import from jaxplan (its own layer and those below)
ALLOWED = {"core": CORE, "search": CORE | SEARCH, "calibrate": CORE | {"calibrate"}, "app": None}
# imports allowed inside functions: optional or heavy dependencies loaded only when used
LAZY_OK = {"matplotlib", "matplotlib.figure", "matplotlib.colors", "jax.experimental.shard_map"}
# the command's entry point imports the CLI (and so JAX) after it has taken over Ctrl-C
ENTRY_OK = {("entry", "cli")}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield ".".join(rel.parts), path


def _layer(name: str) -> str:
    top = name.split(".")[0]
    return "core" if top in CORE else "search" if top in SEARCH else "calibrate" if top == "calibrate" else "app"


def _jaxplan_imports(name: str, tree: ast.Module) -> set[str]:
    """The jaxplan modules a module imports at its top level, as 'sweep', 'calibrate.kernels', ..."""
    package = name.split(".")[:-1] if not name.endswith("__init__") else name.split(".")[:-1]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            mod = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:                      # from . import x
                out |= {".".join(base + [a.name]) for a in node.names}
            else:
                out.add(mod)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxplan"):
            out.add(node.module[len("jaxplan."):])
    return {m.removesuffix(".__init__") for m in out if m}


def test_layers_import_only_downwards_and_without_cycles():
    graph, bad = {}, []
    for name, path in _modules():
        deps = _jaxplan_imports(name, ast.parse(path.read_text()))
        graph[name.removesuffix(".__init__")] = deps
        allowed = ALLOWED[_layer(name)]
        for d in deps:
            if allowed is not None and d.split(".")[0] not in allowed:
                bad.append(f"{name} ({_layer(name)}) imports {d} ({_layer(d)})")
    assert not bad, bad
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in seen:
            return
        stack.append(m)
        for d in graph.get(m, ()):
            if d in graph:
                visit(d)
        stack.pop()
        seen.add(m)

    for m in graph:
        visit(m)


def test_imports_sit_at_the_top_of_modules():
    inner = []
    for name, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        mods = [a.name for a in sub.names] if isinstance(sub, ast.Import) else [sub.module or "."]
                        if not set(mods) <= LAZY_OK and not {(name, m) for m in mods} <= ENTRY_OK:
                            inner.append(f"{name}.{node.name}: {mods}")
    assert not inner, inner


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or (Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    run = subprocess.run([str(ruff), "check", "jaxplan", "tests", "benchmarks"], cwd=PKG.parent,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:]
