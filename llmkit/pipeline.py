"""`llmkit run RECIPE`: run the stages a recipe's pipeline.yaml lists, in order.

pipeline.yaml::

    name: tiny-es
    description: ...
    stages:
      - tokenizer                              # runs tokenizer.yaml with `llmkit tokenizer`
      - {name: sft, stage: sft, config: sft.yaml}

Every stage config is checked before the first stage starts.  A stage whose output directory
holds a finished run made with the same config from the input runs as they are now (each
manifest records the `finished_at` of the runs it read) is skipped; an
unfinished one resumes from its last checkpoint; a stage whose input was re-made (in this
invocation or since it ran) runs again.  `--from STAGE` redoes that stage and every later one.  `--target STAGE` runs only that stage and
the stages it reads from (found from the configs' paths), e.g. sft -> reward -> ppo.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmkit import runs
from llmkit.config import LlmkitError, read_yaml
from llmkit.stages import STAGES, manifest_summary


def read_pipeline(recipe: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    recipe = Path(recipe)
    if not recipe.is_dir():
        raise LlmkitError(f"recipe directory not found: {recipe}")
    pfile = recipe / "pipeline.yaml"
    spec = read_yaml(pfile)
    bad = set(spec) - {"name", "description", "stages"}
    if bad:
        raise LlmkitError(f"{pfile}: unknown keys {sorted(bad)}; valid: name, description, stages")
    stages = spec.get("stages")
    if not isinstance(stages, list) or not stages:
        raise LlmkitError(f"{pfile}: 'stages' must be a non-empty list")

    out = []
    for i, s in enumerate(stages):
        if isinstance(s, str):
            s = {"name": s, "stage": s}
        if not isinstance(s, dict):
            raise LlmkitError(f"{pfile}: stage {i} must be a name or a mapping")
        extra = set(s) - {"name", "stage", "config"}
        if extra:
            raise LlmkitError(f"{pfile}: stage {i}: unknown keys {sorted(extra)}; valid: name, stage, config")
        stage = s.get("stage") or s.get("name")
        if stage not in STAGES:
            raise LlmkitError(f"{pfile}: stage {i}: unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        name = s.get("name") or stage
        config = recipe / s.get("config", f"{name}.yaml")
        out.append({"name": name, "stage": stage, "config": config})
    names = [s["name"] for s in out]
    if len(set(names)) != len(names):
        raise LlmkitError(f"{pfile}: stage names must be unique, got {names}")
    return spec, out


def _output_dir(cfg) -> str:
    for a in cfg.args:
        if getattr(a, "output_dir", None):
            return a.output_dir
    raise LlmkitError(f"{cfg.source}: output_dir is required")


def dependencies(loaded: list[tuple]) -> dict[str, set[str]]:
    """stage name -> names of the stages whose output directory its config reads.

    Derived from the configs themselves: a stage depends on another when one of its values
    (model_name_or_path, tokenizer_name_or_path, reward_model_path, ...) is that stage's
    output_dir.  No separate declaration to keep in sync."""
    outs = {str(Path(_output_dir(cfg))): s["name"] for s, _, cfg in loaded}
    deps: dict[str, set[str]] = {}
    for s, _, cfg in loaded:
        values = [v for k, v in cfg.explicit.items() if k != "output_dir" and isinstance(v, str)]
        deps[s["name"]] = {outs[str(Path(v))] for v in values if str(Path(v)) in outs} - {s["name"]}
    return deps


def _closure(target: str, deps: dict[str, set[str]]) -> set[str]:
    need, todo = set(), [target]
    while todo:
        n = todo.pop()
        if n not in need:
            need.add(n)
            todo += deps[n]
    return need


def run_recipe(recipe: str | Path, force: bool = False, from_stage: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
    from llmkit.stages import load_config

    spec, stages = read_pipeline(recipe)
    names = [s["name"] for s in stages]
    for flag, value in (("--from", from_stage), ("--target", target)):
        if value and value not in names:
            raise LlmkitError(f"{flag} {value}: no such stage in {recipe}; stages: {', '.join(names)}")
    loaded = [(s, *load_config(s["stage"], str(s["config"]), None)) for s in stages]  # fail fast on any config
    if target:
        wanted = _closure(target, dependencies(loaded))
        loaded = [x for x in loaded if x[0]["name"] in wanted]
    summary = []
    deps = dependencies(loaded)
    order = {s["name"]: i for i, (s, _, _) in enumerate(loaded)}
    for name, ds in deps.items():
        late = sorted(d for d in ds if order[d] > order[name])
        if late:
            raise LlmkitError(f"{recipe}/pipeline.yaml: stage {name} reads the output of {', '.join(late)}, listed after it; "
                              "reorder the stages")
    outs = {s["name"]: str(Path(_output_dir(cfg))) for s, _, cfg in loaded}
    finished: dict[str, str] = {}  # stage name -> finished_at of its run as it stands now
    ran: set[str] = set()
    redo_rest = force
    for s, mod, cfg in loaded:
        name = s["name"]
        redo_rest = redo_rest or name == from_stage
        out = _output_dir(cfg)
        runs.recover(out)  # a run stopped while moving into place counts as what it is
        manifest = runs.read_manifest(out)
        used = (manifest or {}).get("upstream", {})  # the input runs as they were when this run used them
        stale = sorted(d for d in deps.get(name, ()) if d in ran or (manifest and used.get(outs[d]) != finished.get(d)))
        if manifest and not redo_rest and not stale:
            if manifest.get("config_hash") != cfg.hash():
                raise LlmkitError(
                    f"stage {name}: {out} was made with a different config than {s['config']}. "
                    f"Run `llmkit run {recipe} --from {name}` to redo it and what follows."
                )
            print(f"llmkit run: {name}: finished run found in {out}, skipping", flush=True)
            summary.append(_row(s, "skipped", manifest, out))
            finished[name] = manifest.get("finished_at", "")
            continue
        why = f" (its input {', '.join(stale)} is newer)" if stale and manifest else ""
        print(f"\n===== llmkit run: {name} ({s['stage']}, {s['config']}){why} =====", flush=True)
        t0 = time.time()
        mod.main(cfg, overwrite=manifest is not None)
        ran.add(name)
        new = runs.read_manifest(out) or {}
        finished[name] = new.get("finished_at", "")
        summary.append(_row(s, f"ran in {time.time() - t0:.0f}s", new, out))
    if runs.is_main_process():
        print_summary(spec.get("name", str(recipe)), summary)
    return summary


def _row(s: dict[str, Any], status: str, manifest: dict[str, Any] | None, out: str) -> dict[str, Any]:
    m = manifest or {}
    return {"stage": s["name"], "status": status, "wall_time_s": m.get("wall_time_s"), "steps": m.get("steps"),
            "metrics": m.get("metrics", {}),
            "summary": manifest_summary(m, s["stage"]), "output_dir": out}


def summary_text(row: dict[str, Any]) -> str:
    """``preference accuracy 0.890 → 0.920`` (or just the value when there is no "before"), as
    the report card writes it."""
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    before = f"{fmt(row['before'])} → " if row.get("before") is not None else ""
    return f"{row['label']} {before}{fmt(row['after'])}"


def print_summary(title: str, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"llmkit run: {title}")
    for col in ("stage", "status", "steps", "key metrics", "output"):
        table.add_column(col)
    for r in rows:
        shown = [summary_text(x) for x in r.get("summary") or []]
        table.add_row(r["stage"], r["status"], str(r["steps"] or "-"), ", ".join(shown), r["output_dir"])
    Console(width=160).print(table)


def list_recipes(recipes_dir: str | Path = "recipes") -> None:
    root = Path(recipes_dir)
    if not root.is_dir():
        raise LlmkitError(f"recipes directory not found: {root}")
    found = False
    for d in sorted(p for p in root.iterdir() if (p / "pipeline.yaml").is_file()):
        found = True
        spec, stages = read_pipeline(d)
        print(f"{d.name}: {spec.get('description', '').strip()}")
        for s in stages:
            state = "-"
            try:
                cfg = read_yaml(s["config"])
                out = cfg.get("output_dir")
                if out and runs.read_manifest(out):
                    state = f"done ({out})"
                elif out and runs.staging_path(out).exists():
                    state = f"unfinished ({runs.staging_path(out)})"
            except LlmkitError:
                state = "config unreadable"
            print(f"  {s['name']:<14} {s['stage']:<10} {s['config']}  {state}")
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and not (p / "pipeline.yaml").is_file())
    if others:
        print("other recipe folders: " + ", ".join(others))
    if not found:
        print(f"no recipes with a pipeline.yaml under {root}")
