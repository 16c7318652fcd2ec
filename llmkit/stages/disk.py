"""The free-disk check made before a run opens its staging directory: what a save writes
(model_footprint), the run's peak on disk (disk_budget), and the refusal (check_disk_space)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from llmkit.config import LlmkitError, StageConfig

# per save, besides the weights and the optimizer: tokenizer, configs, RNG, scheduler and trainer state
SAVE_OVERHEAD = 16 * 2**20
SKIP_DISK_CHECK = "LLMKIT_SKIP_DISK_CHECK"


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _lora_parameters(model, lora) -> int:
    """Parameters ``lora`` will add to ``model``: PEFT applied to a weightless (meta) copy."""
    import copy

    import torch
    from peft import get_peft_model

    try:
        with torch.device("meta"):
            shell = type(model)(copy.deepcopy(model.config))
        return sum(p.numel() for p in get_peft_model(shell, copy.deepcopy(lora)).parameters() if p.requires_grad)
    except Exception:  # an architecture that cannot be rebuilt from its config: r x (in + out) of every linear layer
        r = lora.r or 8
        return sum(r * (m.in_features + m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear))


def model_footprint(model, lora=None) -> tuple[int, int, int]:
    """(bytes of the weights a save writes, trainable parameters, bytes of the whole model).

    With ``lora`` (a LoRA config the trainer will apply) or for a PEFT model, a save writes the
    adapter only (float32, PEFT's default); otherwise the whole model in its own dtype."""
    params = list(model.parameters())
    whole = sum(p.numel() * p.element_size() for p in params)
    if lora is not None:
        n = _lora_parameters(model, lora)
        return 4 * n, n, whole
    trainable = [p for p in params if p.requires_grad]
    saved = sum(p.numel() * p.element_size() for p in trainable) if hasattr(model, "peft_config") else whole
    return saved, sum(p.numel() for p in trainable), whole


def disk_budget(targs, weights: int, trainable: int, final: int) -> tuple[int, int, int]:
    """(bytes a run writes at its peak, checkpoints kept, bytes per checkpoint).

    checkpoint = weights + optimizer state (AdamW: 2 float32 values per trainable parameter;
                 none with save_only_model) + SAVE_OVERHEAD
    kept       = save_total_limit (without one: max_steps / save_steps, else 1); none with
                 save_strategy: no
    peak       = the larger of (kept + 1) checkpoints (a new one is written before the oldest
                 is deleted) and kept checkpoints + the final model, plus 10 %"""
    per = weights + (0 if getattr(targs, "save_only_model", False) else 8 * trainable) + SAVE_OVERHEAD
    strategy = getattr(targs.save_strategy, "value", targs.save_strategy)
    if strategy == "no":
        kept = 0
    elif targs.save_total_limit and targs.save_total_limit > 0:
        kept = targs.save_total_limit
    elif targs.max_steps > 0 and targs.save_steps:
        kept = max(1, int(targs.max_steps // targs.save_steps) if targs.save_steps >= 1 else math.ceil(1 / targs.save_steps))
    else:
        kept = 1
    peak = max((kept + 1) * per if kept else 0, kept * per + final + SAVE_OVERHEAD)
    return int(peak * 1.1), kept, per


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_disk_space(targs, cfg: StageConfig, staging: Path, weights: int, trainable: int, final: int, extra: int = 0) -> None:
    """Refuse, before the staging directory exists, a run whose checkpoints and final model will
    not fit on the output directory's filesystem (see disk_budget).  Checkpoints a resumed run
    already has count as written.  LLMKIT_SKIP_DISK_CHECK=1 skips the check."""
    if os.environ.get(SKIP_DISK_CHECK, "0") not in ("0", "", "false"):
        return
    need, kept, per = disk_budget(targs, weights, trainable, final)
    ckpts = staging / "checkpoints"
    written = sum(f.stat().st_size for f in ckpts.rglob("*") if f.is_file()) if ckpts.is_dir() else 0
    need = max(need + extra - written, 0)
    free = free_disk_bytes(staging)
    if need > free:
        raise LlmkitError(
            f"{cfg.source}: not enough free disk space for this run: it needs about {_gb(need)} next to {staging} "
            f"({kept} checkpoints kept by save_total_limit + 1 being written, {_gb(per)} each with the optimizer state, "
            f"and the final model {_gb(final)}) but only {_gb(free)} are free. Free some space, lower save_total_limit "
            f"(or set save_only_model: true / save_strategy: no), or choose an output_dir on another disk "
            f"({SKIP_DISK_CHECK}=1 skips this check)"
        )
