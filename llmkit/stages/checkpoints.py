"""Checkpoints of a run: which ``checkpoint-N`` directories are complete, retention, where a
re-run resumes from, and the SIGTERM/SIGINT stop that ends the current step, saves and exits 143.
Shared by the TRL stages (common.train) and llmkit's PPO trainer."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

from llmkit import runs
from llmkit.config import LlmkitError

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# what a checkpoint's weights are written as: safetensors or .bin (single or sharded with an
# index), an FSDP sharded state dict, a DeepSpeed global_step directory
_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "adapter_model.bin", "pytorch_model.bin.index.json", "pytorch_model_fsdp_*", "global_step*")


def _checkpoint_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every ``checkpoint-N`` directory, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in ckpt_dir.iterdir() if (m := _CHECKPOINT.fullmatch(d.name)) and d.is_dir()]
    return sorted(found)


def checkpoint_complete(d: Path) -> bool:
    """A checkpoint is complete when its trainer_state.json (which the Trainer and the ppo stage
    write last) is whole JSON for the step in the directory's name, and its weights are there.
    A run killed while saving, or while retention deleted an old checkpoint, leaves neither."""
    m = _CHECKPOINT.fullmatch(d.name)
    try:
        state = json.loads((d / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if not m or not isinstance(state, dict) or state.get("global_step") != int(m.group(1)):
        return False
    return any(next(d.glob(pattern), None) is not None for pattern in _WEIGHTS)


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint or None."""
    complete = [d for _, d in _checkpoint_dirs(ckpt_dir) if checkpoint_complete(d)]
    return str(complete[-1]) if complete else None


def discard_incomplete_checkpoints(ckpt_dir: Path) -> None:
    """Delete the checkpoints a killed run left half written (main process), before resuming:
    they are never resumed from, and the Trainer's retention (save_total_limit) would count
    them, and could keep one of them instead of the newest complete checkpoint."""
    if not runs.is_main_process():
        return
    for _, d in _checkpoint_dirs(ckpt_dir):
        if not checkpoint_complete(d):
            print(f"llmkit: removing the incomplete checkpoint {d} (the run was stopped while writing it)", flush=True)
            shutil.rmtree(d, ignore_errors=True)


def rotate_checkpoints(ckpt_dir: Path, limit: int | None) -> None:
    """Keep the newest ``limit`` complete checkpoints (for stages that save their own, ppo):
    only complete ones count, so the newest complete checkpoint is never deleted."""
    if not limit or limit <= 0:
        return
    complete = [d for _, d in _checkpoint_dirs(ckpt_dir) if checkpoint_complete(d)]
    for d in complete[:-limit]:
        shutil.rmtree(d, ignore_errors=True)



class StageInterrupted(LlmkitError):
    """SIGTERM/SIGINT during training: a checkpoint was saved; the same command resumes."""

    exit_code = 143


def stop_on_signal_callback(flag: dict):
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        """At the end of the step in which a signal arrived on any process (a SIGTERM to one node
        of a multi-node run): every process saves the checkpoint together and stops."""

        def on_step_end(self, args, state, control, **kwargs):
            if signal_on_any_process(flag):
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnSignal()


def signal_on_any_process(flag: dict) -> bool:
    """True when any process of the run got SIGTERM/SIGINT (one all-reduce of a flag per step
    when several processes train; a scheduler may signal one node only). A process that learns
    it from another records the signal name so that it stops the same way."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag["signal"])
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1.0 if flag["signal"] else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t.item() > 0 and not flag["signal"]:
        flag["signal"] = "SIGTERM (to another process of this run)"
    return t.item() > 0


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


def drop_metrics_after(metrics_file: Path, step: int) -> None:
    """Forget what a killed run logged after the checkpoint it resumes from (those steps are
    trained and logged again)."""
    if metrics_file.exists():
        kept = [r for r in runs.read_metrics(metrics_file) if r.get("step", 0) <= step]
        metrics_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))



def resume_point(staging: Path) -> str | None:
    """The checkpoint an interrupted run resumes from (None for a fresh run): incomplete
    checkpoints are removed first, and what the run logged after that checkpoint is dropped
    from metrics.jsonl (those steps are trained and logged again)."""
    discard_incomplete_checkpoints(staging / "checkpoints")
    resume = last_checkpoint(staging / "checkpoints")
    if resume and runs.is_main_process():
        print(f"llmkit: resuming from {resume}", flush=True)
        drop_metrics_after(staging / "metrics.jsonl", int(Path(resume).name.split("-")[1]))
    return resume
