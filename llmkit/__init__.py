"""llmkit: the whole life of a Spanish language model on the Hugging Face stack.

The Python API, for notebooks and scripts; the same code paths as the CLI (the stage registry,
the same validation, the same run directories), with errors raised as ``LlmkitError`` (one
line: what is wrong and how to fix it) instead of an exit status::

    import llmkit

    run = llmkit.train("sft", config="recipes/tiny-es/sft.yaml", output_dir="runs/mi-sft", learning_rate=1e-4)
    run.metrics["sample_exact_match"]
    run.generate("¿Cuál es la capital de Chile?")
    runs = llmkit.run_recipe("recipes/tiny-es", target="sft")      # {"tokenizer": Run, "pretrain": Run, "sft": Run}
    results = llmkit.evaluate(run, tasks="es_llm", limit=20)
    llmkit.report("recipes/tiny-es")                                 # report.md + report.html

Importing llmkit is cheap: torch, transformers and TRL are imported when a function needs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError

__version__ = "0.1.0"
__all__ = ["LlmkitError", "Run", "evaluate", "report", "run_recipe", "train"]


class Run:
    """A finished run directory (what every stage writes): its manifest, metrics and model.

    ``Run("runs/tiny-es/sft")`` refuses a directory that is not a finished llmkit run."""

    def __init__(self, path: str | Path):
        from llmkit.runs import read_manifest, require_run

        self.path = Path(path)
        require_run(self.path, "run")
        manifest = read_manifest(self.path)
        if manifest is None:
            raise LlmkitError(f"{self.path} is not a finished llmkit run (no manifest.json)")
        self.manifest: dict[str, Any] = manifest
        self._model = None
        self._tokenizer = None

    def __repr__(self) -> str:
        shown = ", ".join(f"{r['label']} {r['after']:.3g}" for r in self.summary if isinstance(r.get("after"), float))
        return f"Run({str(self.path)!r}, stage={self.stage!r}{', ' + shown if shown else ''})"

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "?")

    @property
    def metrics(self) -> dict[str, Any]:
        """The final metrics the stage measured (held-out numbers before and after training)."""
        return self.manifest.get("metrics", {})

    @property
    def summary(self) -> list[dict[str, Any]]:
        """The stage's key numbers: ``[{"label", "metric", "before", "after"}]``."""
        from llmkit.stages import manifest_summary

        return manifest_summary(self.manifest)

    @property
    def lineage(self) -> list[dict[str, Any]]:
        """The chain of runs this model was trained on, base first, ending with this run."""
        from llmkit.lineage import lineage

        return lineage(str(self.path))

    @property
    def config(self) -> dict[str, Any]:
        """The keys the run was started with (its config.yaml)."""
        import yaml

        f = self.path / "config.yaml"
        return yaml.safe_load(f.read_text(encoding="utf-8")) if f.is_file() else {}

    def log(self) -> list[dict[str, Any]]:
        """Every logged step (metrics.jsonl): loss, eval loss, learning rate, rewards, ..."""
        from llmkit.runs import read_metrics

        f = self.path / "metrics.jsonl"
        return read_metrics(f) if f.is_file() else []

    def samples(self) -> list[dict[str, Any]]:
        """Greedy answers to held-out prompts the stage wrote (sft, grpo, ppo), before and after."""
        f = self.path / "samples.jsonl"
        return [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()] if f.is_file() else []

    def load_tokenizer(self):
        from llmkit.modeling import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(str(self.path), "run")
        return self._tokenizer

    def load_model(self, dtype: str | None = None):
        """The trained model, as eval and serve load it: a LoRA run as its base + adapter
        (a stacked run's adapter is the whole chain), a reward run as a sequence classifier."""
        import torch

        from llmkit.modeling import check_model_source, is_adapter_dir

        if self.stage == "tokenizer":
            raise LlmkitError(f"{self.path} is a tokenizer run: it has no model (use run.load_tokenizer())")
        check_model_source(str(self.path), "run")
        kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
        if self.stage == "reward":
            from transformers import AutoModelForSequenceClassification

            return AutoModelForSequenceClassification.from_pretrained(self.path, **kwargs)
        if is_adapter_dir(str(self.path)):
            from peft import AutoPeftModelForCausalLM

            return AutoPeftModelForCausalLM.from_pretrained(self.path, **kwargs)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.path, **kwargs)

    def generate(self, prompt: str | list[dict[str, str]], max_new_tokens: int = 64, system: str | None = None) -> str:
        """The model's greedy answer. A string is sent as one user turn through the run's chat
        template when it has one (else continued as plain text); a list is a conversation."""
        from llmkit.modeling import generate_completions

        tok = self.load_tokenizer()
        if self._model is None:
            self._model = self.load_model()
        if isinstance(prompt, str) and tok.chat_template:
            prompt = [{"role": "user", "content": prompt}]
        if system and isinstance(prompt, list):
            prompt = [{"role": "system", "content": system}, *prompt]
        return generate_completions(self._model, tok, [prompt], max_new_tokens)[0]


def train(stage: str, config: str | Path | None = None, overwrite: bool = False, **overrides: Any) -> Run:
    """Run one stage, as ``llmkit STAGE --config CONFIG --key value ...`` does; returns its run.

    ``overrides`` are the stage's keys (``learning_rate=1e-4``, ``output_dir="runs/x"``,
    ``datasets=["data/sft_train.jsonl"]``); ``overwrite=True`` replaces a finished run."""
    from llmkit.stages import run_stage

    return Run(run_stage(stage, str(config) if config else None, overrides or None, overwrite=overwrite))


def run_recipe(recipe: str | Path, force: bool = False, target: str | None = None, from_stage: str | None = None) -> dict[str, Run]:
    """Run a recipe's stages in order (``llmkit run RECIPE``): finished stages are skipped,
    unfinished ones resumed. ``target`` runs only that stage and what it reads from."""
    from llmkit.pipeline import run_recipe as _run
    from llmkit.report import write_after_run

    rows = _run(recipe, force=force, from_stage=from_stage, target=target)
    write_after_run(recipe)
    return {r["stage"]: Run(r["output_dir"]) for r in rows}


def evaluate(run: Run | str | Path, tasks: str = "es", output_dir: str | Path | None = None, overwrite: bool = False,
             **options: Any) -> dict[str, Any]:
    """Evaluate a run (or model path) on Spanish tasks, as ``llmkit eval`` does; returns the
    results (results.json: per task its metrics, chance level and n). ``options`` are
    ``llmkit eval``'s: engine, limit, num_fewshot, data_dir, batch_size, apply_chat_template, ..."""
    from llmkit.evaluation.runner import EvalArgs, load_eval_config
    from llmkit.evaluation.runner import evaluate as _evaluate

    target = str(run.path if isinstance(run, Run) else run)
    keys = {"target": target, "tasks": tasks, "output_dir": str(output_dir) if output_dir else None, "overwrite": overwrite,
            **options}
    out = _evaluate(load_eval_config(None, keys).get(EvalArgs))
    return json.loads((Path(out) / "results.json").read_text(encoding="utf-8"))


def report(target: str | Path) -> Path:
    """Write the report card of a recipe's runs (report.md and report.html); returns the HTML path."""
    from llmkit.report import write_report

    return write_report(target)[1]
