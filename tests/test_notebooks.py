"""The notebooks in notebooks/: the CPU one is executed here, end to end (with few steps), so it
cannot rot; the Colab one is checked for valid cells (it needs a GPU and the hub)."""

from __future__ import annotations

import ast
import json

import pytest
from conftest import REPO

NOTEBOOKS = REPO / "notebooks"


def _code(nb) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_is_valid_has_no_outputs_and_parses(name):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code"), "outputs are committed"
    for src in _code(nb):
        ast.parse("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("!", "%"))))
    text = " ".join("".join(c["source"]) for c in nb.cells if c.cell_type == "markdown")
    words = text.lower().split()
    assert sum(words.count(w) for w in ("el", "la", "de", "que", "con", "los", "en")) > 0.1 * len(words)  # written in Spanish


def test_cpu_notebook_runs_the_whole_life_of_the_tiny_model(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    runs = tmp_path / "runs"
    monkeypatch.setenv("LLMKIT_CUADERNO_RAPIDO", "1")
    monkeypatch.setenv("LLMKIT_CUADERNO_RUNS", str(runs))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(NOTEBOOKS / "01_vida_de_un_modelo_cpu.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    for stage in ("tokenizer", "pretrain", "sft", "dpo", "grpo"):
        m = json.loads((runs / stage / "manifest.json").read_text())
        assert m["status"] == "complete" and m["stage"] == stage
    assert (runs / "eval" / "sft" / "results.json").is_file()
    assert (runs / "report.html").is_file()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "held-out perplexity" in outputs and " sft:" in outputs and "linaje:" in outputs
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
