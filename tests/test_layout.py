"""The package's shape (docs/training.md, "The modules"): a folder per layer, imports that run
only down the layers, package ``__init__``s that import nothing, and a serving path free of jax."""

import ast
import os
import subprocess
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bt_jax")


def _modules():
    """(folder, path) of every module in the package; folder is '' at the top level."""
    for root, _, files in os.walk(PACKAGE):
        folder = os.path.relpath(root, PACKAGE)
        for name in sorted(files):
            if name.endswith(".py"):
                yield ("" if folder == "." else folder), os.path.join(root, name)


def _imported_folders(path):
    """The bt_jax folders (or top-level modules) a module imports, read off its syntax tree."""
    with open(path) as f:
        source = f.read()
    try:
        tree = ast.parse(source)
    except SystemError:
        # CPython 3.11's AST builder can raise a spurious "recursion depth mismatch" when
        # another thread of the worker (orbax's, after the checkpoint tests) builds one at
        # the same time (python/cpython#106905); the source itself is fine: parse again.
        tree = ast.parse(source)
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    return {name.split(".")[1] for name in names if name.startswith("bt_jax.")}


def _folder_graph():
    graph = {}
    for folder, path in _modules():
        if folder:
            graph.setdefault(folder, set()).update(_imported_folders(path) - {folder})
    return graph


def test_only_config_sits_at_the_top_level():
    top = sorted(os.path.basename(p) for folder, p in _modules() if not folder)
    assert top == ["__init__.py", "config.py"]


def test_no_folder_imports_one_that_imports_it_back():
    graph = _folder_graph()

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,)))
                   for n in graph.get(start, ()))

    assert [f for f in graph if reaches(f, f)] == []


def test_training_is_imported_only_by_training_and_the_benchmark():
    importers = {f for f, deps in _folder_graph().items() if "train" in deps}
    assert importers <= {"benchmark"}, importers


def test_package_inits_import_nothing():
    for folder, path in _modules():
        if os.path.basename(path) == "__init__.py":
            assert _imported_folders(path) == set(), path


@pytest.mark.parametrize("module", ["bt_jax.identify.app", "bt_jax.identify.report",
                                    "bt_jax.evaluation", "bt_jax.evaluation.stats"])
def test_serving_stays_free_of_jax(module):
    """A numpy-only gallery query must not pay for importing jax and flax (the 1-NN
    evaluator's search, evaluation/knn.py, does use jax)."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
