"""The run of a TRL/transformers trainer inside a stage: open the staging directory (after the
free-disk check), build the trainer (a refused configuration becomes one clear error), train with
resume and the SIGTERM stop, and the end-of-stage bookkeeping (plot, manifest, atomic rename).
Device defaults live in devices.py, value checks in checks.py, checkpoints in checkpoints.py,
the disk budget in disk.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from llmkit import runs
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import checkpoints, devices, disk


def open_trainer_staging(targs, cfg: StageConfig, stage: str, overwrite: bool, model, lora=None, has_eval: bool = True,
                         final_full_model: bool = False, extra_bytes: int = 0) -> tuple[Path, str]:
    """Check the free disk space for ``model`` (with ``lora`` when the trainer applies it; the
    final save is the whole model with ``final_full_model``), then open the run's staging
    directory and point the trainer's checkpoints into it (evaluation off when there is no
    held-out set). Returns (staging dir, final output_dir)."""
    from transformers.trainer_utils import IntervalStrategy

    output_dir = targs.output_dir
    weights, trainable, whole = disk.model_footprint(model, lora)
    final = whole if final_full_model else weights
    disk.check_disk_space(targs, cfg, runs.staging_path(output_dir), weights, trainable, final, extra_bytes)
    staging = runs.open_staging(output_dir, cfg, stage, overwrite)
    if runs.is_main_process():
        print(f"llmkit {stage}: {devices.describe_layout(devices.run_layout(cfg))}", flush=True)
    trackers_into(staging, targs, cfg, output_dir)
    targs.output_dir = str(staging / "checkpoints")
    if not has_eval:
        targs.eval_strategy = IntervalStrategy.NO
    return staging, output_dir


def trackers_into(staging: Path, targs, cfg: StageConfig, output_dir: str) -> None:
    """Local trackers write inside the run: TensorBoard's event files to ``<run>/tensorboard``
    (``tensorboard --logdir <run>/tensorboard``), trackio's database to ``<run>/trackio``
    (``TRACKIO_DIR=<run>/trackio trackio show``). The run is named after its directory and
    trackio's project is "llmkit" unless the config names them."""
    report_to = getattr(targs, "report_to", None) or []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if not any(n in ("tensorboard", "trackio") for n in names):
        return
    if "run_name" not in cfg.explicit:
        targs.run_name = Path(output_dir).name
    if "tensorboard" in names:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(staging / "tensorboard")
    if "trackio" in names:
        import sys

        os.environ["TRACKIO_DIR"] = str(staging / "trackio")
        for mod in [m for name, m in sys.modules.items() if name.split(".")[0] == "trackio"]:  # imported by an earlier run
            for attr, sub in (("TRACKIO_DIR", ""), ("MEDIA_DIR", "media"), ("ARTIFACTS_DIR", "artifacts")):
                if isinstance(getattr(mod, attr, None), Path):
                    setattr(mod, attr, staging / "trackio" / sub if sub else staging / "trackio")
        if "project" not in cfg.explicit and hasattr(targs, "project"):
            targs.project = "llmkit"


def build_trainer(staging: Path, cfg: StageConfig, cls, *args, **kwargs):
    """Construct the library's trainer. A configuration it refuses (TRL/transformers raise
    ValueError for conflicting options, e.g. padding_free without packing but with max_length)
    becomes one LlmkitError naming the config file; a staging directory with no checkpoint yet
    is removed, so nothing half-written is left behind."""
    try:
        trainer = cls(*args, **kwargs)
    except ValueError as exc:
        if runs.is_main_process() and not any((staging / "checkpoints").glob("checkpoint-*")):
            shutil.rmtree(staging, ignore_errors=True)
        runs.release_lock(runs.output_of(staging))
        msg = " ".join(str(exc).split())
        raise LlmkitError(f"{cfg.source}: {cls.__name__} refused the configuration: {msg[:500]}") from None
    except BaseException:
        runs.release_lock(runs.output_of(staging))
        raise
    quiet_progress(trainer)
    return trainer


def quiet_progress(trainer) -> None:
    """One line per log step: llmkit's own (runs.make_metrics_callback).  transformers' progress
    bar (with its ETA) stays, but it no longer prints the raw logs dict under itself; the
    PrinterCallback that prints it instead of the bar (disable_tqdm) is removed."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgressCallback(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    handler = trainer.callback_handler
    for cb in list(handler.callbacks):
        if type(cb) is ProgressCallback:
            handler.remove_callback(cb)
            handler.add_callback(QuietProgressCallback())
        elif type(cb) is PrinterCallback:
            handler.remove_callback(cb)




def train(trainer, staging: Path):
    """Run trainer.train(), resuming from the newest checkpoint of an interrupted run; after a
    SIGTERM/SIGINT the current step ends, a checkpoint is written and StageInterrupted is
    raised, so the run directory stays `.partial` and the same command resumes from it."""
    try:
        resume = checkpoints.resume_point(staging)
        if resume and _training_finished(resume):
            return _load_finished(trainer, resume)
        with checkpoints.stop_on_signal() as flag:
            trainer.add_callback(checkpoints.stop_on_signal_callback(flag))
            result = trainer.train(resume_from_checkpoint=resume)
        if flag["signal"]:
            ckpt = checkpoints.last_checkpoint(staging / "checkpoints")
            raise checkpoints.StageInterrupted(f"stopped by {flag['signal']}; checkpoint {ckpt} saved. "
                                               "Run the same command again to resume.")
        return result
    except BaseException:  # interrupted, refused or crashed: nobody writes the run now (the same command resumes it)
        runs.release_lock(runs.output_of(staging))
        raise


def _training_finished(checkpoint: str) -> bool:
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)


def _load_finished(trainer, checkpoint: str):
    """The run was killed after its last step's checkpoint (e.g. during the final save).
    transformers would run one step too many when resumed from it (seen with 5.19: 41 of 40),
    so load that checkpoint's weights and state instead of training."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    losses = [r["train_loss"] for r in trainer.state.log_history if "train_loss" in r]
    logged = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    loss = losses[-1] if losses else (sum(logged) / len(logged) if logged else float("nan"))
    return TrainOutput(trainer.state.global_step, loss, {})


def final_eval_loss(trainer) -> float:
    """Held-out loss of the trained model: the trainer's own evaluation at the last step when it
    made one (transformers evaluates after the last step with a step eval strategy), else one
    evaluation now. Saves evaluating the same model twice."""
    step = trainer.state.global_step
    for row in reversed(trainer.state.log_history):
        if "eval_loss" in row and row.get("step") == step:
            return float(row["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


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
    lineage: list[dict[str, Any]] | None = None,
) -> Path:
    """Plot the curves, write the manifest last (with the run's ``lineage``: see
    llmkit/lineage.py) and move the run into place."""
    if runs.is_main_process():
        runs.plot_curves(staging / "metrics.jsonl", staging / "loss.png", plot_keys, title=f"{stage}: {output_dir}")
    from llmkit.stages import summary

    extra: dict[str, Any] = {"summary": summary(stage, metrics), "layout": devices.run_layout(cfg)}
    if lineage:
        extra["lineage"] = lineage
    manifest = runs.build_manifest(stage, cfg, started, inputs, metrics, steps=steps, extra=extra)
    from llmkit.modelcard import write_run_card

    write_run_card(output_dir, staging, manifest)  # README.md: the model card (replaces PEFT's empty template)
    out = runs.finalize(staging, output_dir, manifest)
    if runs.is_main_process():
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"llmkit {stage}: done in {time.time() - started:.1f}s -> {out}  ({shown})", flush=True)
    return out
