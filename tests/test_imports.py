"""The package's import structure: no cycle between llmkit's modules (imports inside functions
count), every module imports on its own in a fresh interpreter, and the stage registry imports
none of the modules that use it."""

from __future__ import annotations

import os
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


# One interpreter imports the third-party libraries llmkit's modules import at module level
# (torch, TRL, lm-eval: most of the time), then forks one child per llmkit module; each child
# starts with no llmkit module loaded and imports only that one, as `python -c "import llmkit.x"`
# would, so a cycle that breaks when its modules are imported in a given order fails here.
_FRESH = """
import ast, importlib, os, sys, traceback

def module_level_imports(path):
    out = []
    def walk(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.Import):
                out.extend(("import", a.name, None) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                out.append(("from", node.module, [a.name for a in node.names]))
            for field in ("body", "orelse", "finalbody", "handlers"):
                walk(getattr(node, field, []) or [])
    walk(ast.parse(open(path, encoding="utf-8").read()).body)
    return out

names, files = sys.argv[1::2], sys.argv[2::2]
package = names[0].split(".")[0]
for f in files:
    for kind, mod, attrs in module_level_imports(f):
        if mod is None or mod.split(".")[0] == package:
            continue
        try:
            m = importlib.import_module(mod)
            for a in attrs or []:
                getattr(m, a, None)
        except Exception:
            pass  # the child reports it, if the module needs it
assert not [m for m in sys.modules if m == package or m.startswith(package + ".")]
failed = []
for name in names:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("failed:", " ".join(failed) if failed else "none", flush=True)
"""


def _modules() -> list[tuple[str, str]]:
    return sorted((".".join(f.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"), str(f))
                  for f in ROOT.rglob("*.py"))


def _import_each_first(mods: list[tuple[str, str]]) -> subprocess.CompletedProcess:
    argv = [x for pair in mods for x in pair]
    return subprocess.run([sys.executable, "-c", _FRESH, *argv], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_every_module_imports_first_in_a_fresh_process():
    mods = _modules()
    assert len(mods) > 20 and "llmkit.stages.ppo" in dict(mods)
    r = _import_each_first(mods)
    assert r.returncode == 0 and r.stdout.strip().endswith("failed: none"), (r.stdout[-500:], r.stderr[-3000:])


def test_the_fresh_import_finds_an_import_time_cycle(tmp_path):
    """A cycle that works in one order and breaks in the other: importing llmkit_cyc.a first
    fails (b, imported by a, needs a.X while a is half-imported); importing b first works."""
    pkg = tmp_path / "llmkit_cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from llmkit_cyc import b\nX = 1\n")
    (pkg / "b.py").write_text("from llmkit_cyc.a import X\n")
    mods = [(f"llmkit_cyc.{n}", str(pkg / f"{n}.py")) for n in ("a", "b")]
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env_path}"
    try:
        r = _import_each_first(mods)
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert r.stdout.strip().endswith("failed: llmkit_cyc.a"), (r.stdout, r.stderr[-2000:])
    assert "ImportError" in r.stderr


def test_the_registry_imports_none_of_its_users():
    users = {"llmkit.cli", "llmkit.pipeline", "llmkit.report", "llmkit.evaluation.runner", "llmkit"}
    assert not (module_graph()["llmkit.stages"] & users)
