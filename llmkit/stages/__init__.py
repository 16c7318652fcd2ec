"""The stage registry: one module per stage, each read top to bottom (config -> validate -> data
-> model -> train -> save).  The CLI, the pipeline, eval, the report and the Python API import
this registry; it imports none of them, and no stage module until one is asked for (a stage
module imports TRL, which takes seconds).

A stage module defines ``STAGE`` (its name), ``CLASSES`` (the dataclasses its keys come from),
``DOC`` (its ``--help`` text), ``main(cfg, overwrite)``, optionally ``defaults(explicit)``, and
``SUMMARY``: its key numbers as ``(label, metric before training or None, metric after)``;
optionally ``COUNT``, the metric holding how many held-out items its shares are measured on, and
``PAIRED``, the metric whose items it also compares one by one before/after (``llmkit.stats``;
its test is in the metrics ``paired_*``; any other row's, when it has one, in ``<metric>_paired_*``).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError, load_stage_config

STAGES = {
    "tokenizer": "llmkit.stages.tokenizer",
    "pretrain": "llmkit.stages.pretrain",
    "sft": "llmkit.stages.sft",
    "reward": "llmkit.stages.reward",
    "dpo": "llmkit.stages.dpo",
    "ppo": "llmkit.stages.ppo",
    "grpo": "llmkit.stages.grpo",
}


def stage_module(name: str):
    if name not in STAGES:
        raise LlmkitError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])


def manifest_summary(manifest: dict[str, Any] | None, stage: str | None = None) -> list[dict[str, Any]]:
    """A run's key numbers: what its manifest recorded, else its stage's SUMMARY filled in from
    its metrics (a manifest written before stages declared one)."""
    m = manifest or {}
    return m.get("summary") or summary(m.get("stage") or stage or "", m.get("metrics", {}))


def summary(stage: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage's SUMMARY filled in from a run's metrics: ``[{"label", "before", "after"}]``
    for every pair whose "after" value the run has, plus ``n`` (held-out items, when the stage
    declares COUNT) and ``paired`` ({"fixed", "broken", "p"}, or {"higher", "lower", "p"} for a
    score, on the stage's PAIRED row and on any row whose metric has its own ``<metric>_paired_p``)."""
    if stage not in STAGES:
        return []
    module = stage_module(stage)
    n = metrics.get(getattr(module, "COUNT", None) or "")
    rows = []
    for label, before, after in getattr(module, "SUMMARY", ()):
        if isinstance(metrics.get(after), (int, float)):
            row = {"label": label, "metric": after, "before": metrics.get(before) if before else None, "after": metrics[after]}
            if isinstance(n, int) and n > 0:
                row["n"] = n
            # a row's own paired test ("<metric>_paired_p", ...), else the stage's PAIRED row's ("paired_p", ...)
            pre = f"{after}_paired_" if f"{after}_paired_p" in metrics else "paired_" if after == getattr(module, "PAIRED", None) else None
            if pre and f"{pre}p" in metrics:
                kind = ("fixed", "broken") if f"{pre}fixed" in metrics else ("higher", "lower")  # shares / scores
                row["paired"] = {k: metrics[f"{pre}{k}"] for k in kind} | {"p": metrics[f"{pre}p"]}
            rows.append(row)
    return rows


# ---- checks before the heavy imports
#
# A stage module imports TRL (its config classes are TRL's), which imports torch, transformers
# and peft: 6-30 s on a busy machine.  The mistakes a user makes most (missing config file, YAML
# syntax, a malformed override, a misspelled key) are found before that import: the first three
# need nothing from the libraries; unknown keys are checked against the stage's key list, which
# every stage command writes to .cache/llmkit/keys/ from the live classes, under a name that
# changes with the installed trl/transformers/peft versions and llmkit's own sources (so a new
# version is never checked against an old list; tests/test_early_errors.py compares the list
# with the classes).  Everything else (types, values) is checked by load_stage_config as before.

_KEY_LIBS = ("trl", "transformers", "peft", "accelerate")


def _key_list_file(stage: str) -> Path:
    import hashlib
    import platform
    from importlib import metadata

    h = hashlib.sha256(f"{stage} {platform.python_version()}".encode())
    for lib in _KEY_LIBS:
        try:
            h.update(f" {lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f" {lib}=none".encode())
    here = Path(__file__).resolve().parents[1]
    for src in (here / "config.py", *sorted((here / "stages").glob("*.py"))):  # where the stages' keys are declared
        h.update(src.read_bytes() if src.is_file() else b"")
    root = Path(os.environ.get("LLMKIT_CACHE_DIR", Path.cwd() / ".cache" / "llmkit"))
    return root / "keys" / f"{stage}-{h.hexdigest()[:16]}.json"


def save_stage_keys(stage: str, mod) -> None:
    """Write the stage's valid keys (from its live classes) for the next pre-import check."""
    import json
    import tempfile

    from llmkit.config import stage_fields

    try:
        f = _key_list_file(stage)
        if f.is_file():
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=f.parent, suffix=".tmp", delete=False) as fh:
            json.dump(sorted(stage_fields(mod.CLASSES)), fh)
        os.replace(fh.name, f)
    except OSError:  # a read-only checkout only loses the fast path
        pass


def cached_stage_keys(stage: str) -> list[str] | None:
    import json

    try:
        keys = json.loads(_key_list_file(stage).read_text())
    except (OSError, ValueError):
        return None
    return keys if isinstance(keys, list) and all(isinstance(k, str) for k in keys) else None


def precheck_stage_config(stage: str, config_path: str | None, overrides) -> None:
    """Find the obvious mistakes without importing torch/trl: unknown stage, missing config file,
    YAML syntax, malformed overrides, and (with the stage's key list cached) unknown keys, in
    the order and with the message load_stage_config gives."""
    from llmkit.config import parse_overrides, read_yaml, unknown_key_message

    if stage not in STAGES:
        raise LlmkitError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    layers = []
    if config_path:
        layers.append((read_yaml(config_path), str(config_path)))
    if overrides:
        layers.append((overrides if isinstance(overrides, dict) else parse_overrides(overrides), "command line"))
    valid = cached_stage_keys(stage) if layers else None
    if valid is None:
        return
    known = set(valid)
    for data, src in layers:
        for key in data:
            if not isinstance(key, str) or key not in known:
                raise LlmkitError(unknown_key_message(str(key), valid, src))


def load_config(stage: str, config_path: str | None, overrides):
    """(stage module, StageConfig) for a stage, from a YAML file and overrides (a dict or
    `--key value` strings): the obvious mistakes are found before the stage module (TRL) is
    imported, the rest by load_stage_config against the live classes."""
    precheck_stage_config(stage, config_path, overrides)
    mod = stage_module(stage)
    save_stage_keys(stage, mod)
    return mod, load_stage_config(mod.CLASSES, config_path, overrides, getattr(mod, "defaults", None))


def run_stage(stage: str, config_path: str | None, overrides=None, overwrite: bool = False) -> Path:
    from llmkit import runs

    mod, cfg = load_config(stage, config_path, overrides)
    try:
        return mod.main(cfg, overwrite=overwrite)
    finally:
        runs.release_locks()  # an in-process caller (API, notebook) never keeps a run locked after an error
