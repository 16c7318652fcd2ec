"""The stage registry: one module per stage, each read top to bottom (config -> validate -> data
-> model -> train -> save).  The CLI, the pipeline, eval, the report and the Python API import
this registry; it imports none of them, and no stage module until one is asked for (a stage
module imports TRL, which takes seconds).

A stage module defines ``STAGE`` (its name), ``CLASSES`` (the dataclasses its keys come from),
``DOC`` (its ``--help`` text), ``main(cfg, overwrite)``, optionally ``defaults(explicit)``, and
``SUMMARY``: its key numbers as ``(label, metric before training or None, metric after)``.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    from llmkit.config import LlmkitError

    if name not in STAGES:
        raise LlmkitError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])


def summary(stage: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage's SUMMARY filled in from a run's metrics: ``[{"label", "before", "after"}]``
    for every pair whose "after" value the run has."""
    if stage not in STAGES:
        return []
    rows = []
    for label, before, after in getattr(stage_module(stage), "SUMMARY", ()):
        if isinstance(metrics.get(after), (int, float)):
            rows.append({"label": label, "metric": after, "before": metrics.get(before) if before else None, "after": metrics[after]})
    return rows
