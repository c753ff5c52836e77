"""The code's shape (docs/ARCHITECTURE.md): no import circle, each package imports only the layers below it, no
long functions, and a built wheel carries every package. The import graph is read with ``ast`` from the modules'
own import statements, at any depth (function-local imports too)."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("orchestrator", "trainables")
# What each part may import of adder-sweep (besides itself); docs/ARCHITECTURE.md says why.
MAY_IMPORT = {
    "trainables": set(),
    "orchestrator.errors": {"trainables"},
    "orchestrator.spec": {"orchestrator.errors", "trainables"},
    "orchestrator.studydir": {"orchestrator.errors", "orchestrator.spec", "trainables"},
    "orchestrator.results": {"orchestrator.errors", "orchestrator.spec", "orchestrator.studydir", "trainables"},
    "orchestrator.cluster": {"orchestrator.errors", "orchestrator.studydir", "trainables"},
    "orchestrator.tune": {"orchestrator.errors", "orchestrator.spec", "orchestrator.studydir", "orchestrator.results",
                          "orchestrator.cluster", "trainables"},
    "orchestrator.api": {"orchestrator.errors", "orchestrator.spec", "orchestrator.studydir", "orchestrator.results",
                         "orchestrator.cluster", "orchestrator.tune", "trainables"},
    "orchestrator.cli": {"orchestrator.errors", "orchestrator.spec", "orchestrator.studydir", "orchestrator.results",
                         "orchestrator.cluster", "orchestrator.tune", "orchestrator.api", "trainables"},
    "orchestrator.__main__": {"orchestrator.cli"},
    "orchestrator": {"orchestrator.api", "orchestrator.spec", "orchestrator.errors"},  # (lazily, by name)
}
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                for a in node.names:
                    deps.add(known(f"{target}.{a.name}") if f"{target}.{a.name}" in mods else known(target))
        graph[name] = {d for d in deps if d and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def part_of(module: str) -> str:
    """The entry of MAY_IMPORT a module belongs to: its longest prefix there."""
    best = ""
    for part in MAY_IMPORT:
        if (module == part or module.startswith(part + ".")) and len(part) > len(best):
            best = part
    assert best, f"{module} belongs to no part of MAY_IMPORT: add it there and to docs/ARCHITECTURE.md"
    return best


def test_the_graph_reader_sees_function_local_imports_and_circles(tmp_path):
    """The checks below could not fail if the reader missed imports: a planted circle through a function-local
    import is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    g = import_graph()
    assert "orchestrator.api" in g["orchestrator.cli.sweep"]  # imported inside cmd_sweep only


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_each_part_imports_only_the_layers_below_it():
    wrong = []
    for module, deps in import_graph().items():
        part = part_of(module)
        for d in deps:
            other = part_of(d)
            if other != part and other not in MAY_IMPORT[part]:
                wrong.append(f"{module} imports {d} ({part} may import {sorted(MAY_IMPORT[part]) or 'nothing'})")
    assert not wrong, "\n".join(wrong)


# Ray is imported only where studies run on it; torch only where models train (and the train command).
RAY_ONLY_IN = ("orchestrator.tune", "orchestrator.cluster", "trainables.tune_adapter")
TORCH_ONLY_IN = ("trainables", "orchestrator.cli.train")


def third_party_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_ray_and_torch_stay_where_they_run():
    """The spec, the study folder and the results read and write files: analysing a study needs neither Ray
    nor torch, and the packages above know them only through tune/, cluster/ and trainables/."""
    wrong = []
    for module, path in modules().items():
        found = third_party_imports(path)
        if "ray" in found and not module.startswith(RAY_ONLY_IN):
            wrong.append(f"{module} imports ray")
        if "torch" in found and not module.startswith(TORCH_ONLY_IN):
            wrong.append(f"{module} imports torch")
    assert not wrong, "\n".join(wrong)


def test_no_function_is_longer_than_80_lines():
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_a_built_wheel_carries_every_package(tmp_path):
    """A non-editable install: build a wheel from the checkout's files (what git would commit), install it alone into a folder, and import
    every module from there (outside the repository, so nothing comes from the source tree)."""
    try:
        import setuptools  # noqa: F401  (the build backend, as pyproject.toml names it)
    except ImportError:
        pytest.skip("setuptools is not installed in this environment")
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()  # (new files too)
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("adder_sweep-*.whl"))
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    expected = sorted(modules())
    code = (
        "import importlib, json, orchestrator, trainables, pkgutil\n"
        "found = ['orchestrator', 'trainables']\n"
        "for pkg in (orchestrator, trainables):\n"
        "    found += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')]\n"
        "for name in found:\n"
        "    if not name.endswith('__main__'):\n"
        "        importlib.import_module(name)\n"
        "import trainables.fused as f\n"
        "print(json.dumps({'found': sorted(found), 'at': orchestrator.__file__,\n"
        "                  'cpp': __import__('os').path.exists(__import__('os').path.join(\n"
        "                      __import__('os').path.dirname(f.__file__), 'fused_ext.cpp'))}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(target)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["at"].startswith(str(target)), got["at"]  # imported from the wheel, not the source tree
    assert got["found"] == expected, set(expected) ^ set(got["found"])
    assert got["cpp"]  # the fused kernel's source travels as package data
