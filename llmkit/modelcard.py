"""The model card: ``README.md`` in a run and in every export, written with huggingface_hub's
``ModelCard``/``ModelCardData``/``EvalResult``.

Metadata (the hub's model-card YAML): base_model (when it is a hub id), datasets (hub ids the
run trained on), language: es, license, pipeline_tag, library_name, tags, and — when the run has
been scored with ``llmkit eval`` (its default output, ``<run's parent>/eval/<run name>/``) — the
results in model-index form.  Below it, a short human summary from the manifest: the stage, the
lineage (every run the model went through), the key numbers (``summary``), the training data, the
recipe's config and how long it took.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LANGUAGE = "es"


def _is_hub_id(value: Any) -> bool:
    s = str(value or "")
    return bool(s) and not s.startswith((".", "/", "~")) and s.count("/") == 1 and not Path(s).exists()


def eval_results_for(run: str | Path) -> dict[str, Any] | None:
    """The results.json that `llmkit eval RUN` wrote by default, if any."""
    p = Path(run).resolve()
    f = p.parent / "eval" / p.name / "results.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _eval_results(results: dict[str, Any] | None):
    from huggingface_hub import EvalResult

    out = []
    for name, task in ((results or {}).get("tasks") or {}).items():
        primary = task.get("primary")
        value = ((task.get("metrics") or {}).get(primary) or {}).get("value")
        if primary and isinstance(value, (int, float)):
            out.append(EvalResult(task_type="text-generation", dataset_type=name, dataset_name=name, metric_type=primary,
                                  metric_value=round(float(value), 4)))
    return out


def _lineage(manifest: dict[str, Any], run: str) -> list[dict[str, Any]]:
    chain = manifest.get("lineage")
    if chain:
        return chain
    try:
        from llmkit.lineage import lineage

        return lineage(run)
    except Exception:  # noqa: BLE001 - a card never fails a run
        return [{"path": run, "stage": manifest.get("stage"), "weights": "full"}]


def card_data(run: str | Path, manifest: dict[str, Any], results: dict[str, Any] | None = None,
              license: str | None = None, extra_tags: list[str] | None = None, library: str | None = None,
              files: str | Path | None = None):
    """The metadata; FILES is where the run's files are now (its staging dir while it is written)."""
    from huggingface_hub import ModelCardData

    inputs = manifest.get("inputs") or {}
    chain = _lineage(manifest, str(run))
    root = chain[0]["path"] if chain else inputs.get("model")
    lora = (Path(files or run) / "adapter_config.json").is_file()
    datasets = [d.get("path") if isinstance(d, dict) else d for d in inputs.get("datasets") or []]
    stages = [s["stage"] for s in chain if s.get("stage")]
    tags = ["llmkit", "spanish", *dict.fromkeys(stages), *(["lora"] if lora else []), *(extra_tags or [])]
    evals = _eval_results(results)
    return ModelCardData(
        language=LANGUAGE,
        license=license or ("apache-2.0" if not _is_hub_id(root) else "other"),
        base_model=root if _is_hub_id(root) else None,
        datasets=[d for d in datasets if _is_hub_id(d)] or None,
        pipeline_tag="text-generation",
        library_name=library or ("peft" if lora else "transformers"),
        tags=list(dict.fromkeys(tags)),
        model_name=Path(run).resolve().name if evals else None,
        eval_results=evals or None,
    )


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def card_text(run: str | Path, manifest: dict[str, Any], results: dict[str, Any] | None = None, usage: str | None = None,
              files: str | Path | None = None) -> str:
    """The human part of the card (markdown, in English like the hub's)."""
    run = str(run)
    name = Path(run).resolve().name
    stage = manifest.get("stage")
    chain = _lineage(manifest, run)
    lines = [f"# {name}", "", "A Spanish language model" + (f" made with llmkit: its `{stage}` stage." if stage else ".")]
    if chain:
        lines += ["", "## How it was trained", ""]
        for step in chain:
            w = step.get("weights", "full")
            lines.append(f"1. `{step['path']}` — {step.get('stage') or 'base model'}" + ("" if w == "full" else f" ({w})"))
    rows = manifest.get("summary") or []
    metrics = manifest.get("metrics") or {}
    if rows or metrics:
        lines += ["", "## Key numbers", "", "| metric | before | after |", "|---|---|---|"]
        lines += [f"| {r.get('label')} | {_number(r.get('before')) if r.get('before') is not None else ''} | {_number(r.get('after'))} |"
                  for r in rows]
        shown = {r.get("metric") for r in rows}
        lines += [f"| {k} |  | {_number(v)} |" for k, v in metrics.items() if k not in shown and isinstance(v, (int, float, str))]
    datasets = (manifest.get("inputs") or {}).get("datasets") or []
    if datasets:
        lines += ["", "## Training data", ""]
        lines += [f"- `{d.get('path')}`" + (f" ({d['rows']} rows)" if d.get("rows") else "") if isinstance(d, dict) else f"- `{d}`"
                  for d in datasets]
    if results and results.get("tasks"):
        lines += ["", "## Evaluation (`llmkit eval`)", "", "| task | metric | value | ± |", "|---|---|---|---|"]
        for t, r in results["tasks"].items():
            m = (r.get("metrics") or {}).get(r.get("primary")) or {}
            err = _number(m.get("stderr")) if m.get("stderr") else ""
            lines.append(f"| {t} | {r.get('primary')} | {_number(m.get('value'))} | {err} |")
    if stage and (Path(files or run) / "config.yaml").is_file():
        lines += ["", "## Reproduce", "", "```sh", f"llmkit {stage} --config {run}/config.yaml", "```"]
    if manifest.get("wall_time_s") is not None:
        lines += ["", f"Finished {manifest.get('finished_at', '?')} in {manifest['wall_time_s']:.0f} s"
                  + (f" (git {manifest['git_revision'][:12]})." if manifest.get("git_revision") else ".")]
    if usage:
        lines += ["", usage]
    return "\n".join(lines) + "\n"


def build_model_card(run: str | Path, manifest: dict[str, Any] | None = None, usage: str | None = None,
                     license: str | None = None, extra_tags: list[str] | None = None, library: str | None = None):
    """The ModelCard of RUN (its manifest unless MANIFEST is given, e.g. while it is staged)."""
    from huggingface_hub import ModelCard

    from llmkit.runs import read_manifest

    manifest = manifest if manifest is not None else (read_manifest(run) or {})
    results = eval_results_for(run)
    data = card_data(run, manifest, results, license, extra_tags, library)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_text(run, manifest, results, usage)}")


def write_model_card(run: str | Path, dest: str | Path, manifest: dict[str, Any] | None = None, usage: str | None = None,
                     license: str | None = None, extra_tags: list[str] | None = None, library: str | None = None) -> Path:
    """Write RUN's model card as DEST/README.md (replacing PEFT's empty template)."""
    out = Path(dest) / "README.md"
    build_model_card(run, manifest, usage, license, extra_tags, library).save(out)
    return out


def write_run_card(output_dir: str | Path, staging: str | Path, manifest: dict[str, Any]) -> None:
    """A training stage's README.md, written into its staging dir just before the run is moved into
    place (main process only; PEFT's empty template is replaced).  A card never fails a run."""
    import sys

    from huggingface_hub import ModelCard

    from llmkit import runs

    if not runs.is_main_process():
        return
    try:
        data = card_data(output_dir, manifest, None, files=staging)
        text = card_text(output_dir, manifest, None, files=staging)
        ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}").save(Path(staging) / "README.md")
    except Exception as exc:  # noqa: BLE001
        print(f"llmkit: warning: no model card written ({type(exc).__name__}: {exc})", file=sys.stderr)
