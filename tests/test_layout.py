"""The shape of the package (README: Layout), read from its source: imports go one way, settings reach the code as
configs, errors live in one module, and no module or function grows past what a reader takes in at once."""

import ast
import glob
import os

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "lradvisor")


def modules():
    """{module name: parsed source} of every module of the package."""
    out = {}
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        with open(path) as f:
            out[name] = ast.parse(f.read(), path)
    return out


def imports(tree, known):
    """The package's modules a module imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lradvisor"):
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            }
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lradvisor")}
    return found & set(known)


def test_no_import_circle():
    mods = modules()
    edges = {m: imports(tree, mods) - {m} for m, tree in mods.items()}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(edges[m]):
            assert state.get(n) != "open", "import circle: " + " -> ".join(path + [n])
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(mods):
        if m not in state:
            visit(m, [m])


def test_settings_reach_the_code_as_configs_and_errors_live_in_one_module():
    for name, tree in modules().items():
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
        }
        if name != "lradvisor.cli":
            assert "Namespace" not in names and "ArgumentParser" not in names, f"{name} parses arguments"
        if name != "lradvisor.errors":
            exceptions = [
                n.name
                for n in ast.walk(tree)
                if isinstance(n, ast.ClassDef)
                and any(getattr(b, "id", "").endswith(("Error", "Exception")) for b in n.bases)
            ]
            control = {"StopRun"}  # the loop's own control flow (engine/loop.py), not an error
            assert set(exceptions) <= control, f"{name} defines {exceptions}: errors belong in lradvisor/errors.py"


def test_modules_and_functions_stay_readable():
    for name, tree in modules().items():
        lines = max((getattr(n, "end_lineno", 0) for n in ast.walk(tree)), default=0)
        assert lines <= 360, f"{name} has {lines} lines: split it by responsibility"
        for f in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            assert f.end_lineno - f.lineno < 90, f"{name}.{f.name} has {f.end_lineno - f.lineno + 1} lines"


def test_git_ignores_what_runs_leave_and_never_the_package():
    """A run leaves mlflow.db's WAL files and a search's optuna.db in the working folder: ignored. The package's own
    files never are (`data/` once hid lradvisor/data/, so a fresh clone lacked its loader)."""
    import subprocess

    import pytest

    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout (an unpacked archive): nothing is ignored")
    left = ["mlflow.db", "mlflow.db-shm", "mlflow.db-wal", "optuna.db", "mlruns/x", "data/cifar-10-batches-py/x"]
    ignored = subprocess.run(["git", "check-ignore", *left], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == left
    ours = [
        os.path.relpath(p, ROOT)
        for d in ("lradvisor", "tests", "scripts", "docs")
        for p in glob.glob(os.path.join(ROOT, d, "**", "*"), recursive=True)
        if "__pycache__" not in p
    ]
    hidden = subprocess.run(["git", "check-ignore", *ours], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert hidden == [], f"ignored by .gitignore, so never committed: {hidden}"
