"""The package's import structure: no cycle between llmkit's modules (imports inside functions
count), every module imports on its own in a fresh interpreter, and the stage registry imports
none of the modules that use it."""

from __future__ import annotations

import subprocess
import sys

from check_imports import ROOT, cycles, module_graph


def test_no_import_cycle():
    assert cycles(module_graph()) == []


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "llmkit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from llmkit import b\n")
    (pkg / "b.py").write_text("def f():\n    from llmkit.a import x\n")
    assert cycles(module_graph(pkg)) == [["llmkit.a", "llmkit.b"]]


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module imported first in its own interpreter would take minutes (TRL); one fresh
    interpreter importing them in reverse order catches import-time errors, and the static
    check above catches the cycles an import order could hide."""
    names = sorted((".".join(f.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__") for f in ROOT.rglob("*.py")),
                   reverse=True)
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\nprint('ok')\n"
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-1500:]


def test_the_registry_imports_none_of_its_users():
    users = {"llmkit.cli", "llmkit.pipeline", "llmkit.report", "llmkit.evaluation.runner", "llmkit"}
    assert not (module_graph()["llmkit.stages"] & users)
