"""Values checked before anything is written: the trainer's values, keys that need an optional
package (report_to, optim, use_liger_kernel, torch_compile, attn_implementation) or hardware
this machine lacks, and the checks every trainer stage makes first (check_trainer_stage)."""

from __future__ import annotations

import os
import shutil
from typing import Any

from llmkit import runs
from llmkit.config import LlmkitError, StageConfig, did_you_mean
from llmkit.stages import devices


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
    if args.fp16 and not devices.has_cuda():
        raise LlmkitError(f"{src}: fp16 needs a GPU; on CPU train in float32 (default) or set bf16: true")
    if args.bf16 and devices.has_cuda():
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
    src = cfg.source
    report_to = getattr(args, "report_to", None) or []
    for name in [report_to] if isinstance(report_to, str) else report_to:
        _check_report_to(name, src)
    _check_optim(args, src)
    _check_liger(args, src)
    _check_torch_compile(args, src)
    for a in cfg.args:
        attn = getattr(a, "attn_implementation", None)
        if attn:
            _check_attn_implementation(str(attn), src)
            break


def _check_report_to(name: str, src: str) -> None:
    if name in ("none", "all"):
        return
    valid = _report_to_names()
    if name not in valid:
        raise LlmkitError(f"{src}: unknown report_to {name!r}.{did_you_mean(str(name), valid, 2)} (valid: none, all, {', '.join(valid)})")
    modules, pip = REPORT_TO_PACKAGES.get(name, ([], ""))
    missing = [alts for alts in modules if not any(installed(m) for m in alts)]
    if missing:
        raise LlmkitError(f"{src}: report_to {name} needs the {' and '.join(a[0] for a in missing)} package, which is not "
                          f"installed: pip install {pip} (or remove {name} from report_to)")


def _check_optim(args, src: str) -> None:
    optim = _value(getattr(args, "optim", None))
    if not (isinstance(optim, str) and optim in OPTIM_PACKAGES):
        return
    module, pip = OPTIM_PACKAGES[optim]
    if not installed(module):
        raise LlmkitError(f"{src}: optim {optim} needs the {module} package, which is not installed: pip install {pip} "
                          "(or use optim: adamw_torch)")
    if module in ("galore_torch", "apollo_torch") and not getattr(args, "optim_target_modules", None):
        raise LlmkitError(f"{src}: optim {optim} needs optim_target_modules (e.g. [attn, mlp]): the layers it trains")


def _check_liger(args, src: str) -> None:
    if not getattr(args, "use_liger_kernel", False):
        return
    if not installed("liger_kernel"):
        raise LlmkitError(f"{src}: use_liger_kernel: true needs the liger-kernel package, which is not installed: "
                          "pip install liger-kernel (or remove use_liger_kernel)")
    if not devices.has_cuda():
        raise LlmkitError(f"{src}: use_liger_kernel: true needs a CUDA GPU (Liger's kernels are Triton GPU kernels); "
                          "remove it on this machine")


def _check_torch_compile(args, src: str) -> None:
    if not getattr(args, "torch_compile", False) or (getattr(args, "torch_compile_backend", None) or "inductor") != "inductor":
        return
    if devices.has_cuda() and not installed("triton"):
        raise LlmkitError(f"{src}: torch_compile on a GPU needs triton, which is not installed: pip install triton "
                          "(or set torch_compile_backend: aot_eager, or remove torch_compile)")
    if not devices.has_cuda() and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++", "clang++")):
        raise LlmkitError(f"{src}: torch_compile on a CPU needs a C++ compiler (g++ or clang++) for its inductor "
                          "backend, and none is on PATH: install one, or set torch_compile_backend: aot_eager, "
                          "or remove torch_compile")


def _check_attn_implementation(attn: str, src: str) -> None:
    name = attn.removeprefix("paged|") if attn != "paged|eager" else attn
    if "/" in name:  # a kernel from the hub (kernels-community/flash-attn...)
        if not installed("kernels"):
            raise LlmkitError(f"{src}: attn_implementation {attn!r} is a hub kernel, which needs the kernels package: "
                              "pip install kernels (or use sdpa)")
        return
    valid = _attn_implementations()
    if name not in valid:
        raise LlmkitError(f"{src}: unknown attn_implementation {attn!r}.{did_you_mean(name, valid, 2)} "
                          f"(valid: {', '.join(valid)}, or a hub kernel "
                          "such as kernels-community/flash-attn2)")
    if name in _FLASH_MODULES:
        module, pip = _FLASH_MODULES[name]
        if not devices.has_cuda():
            raise LlmkitError(f"{src}: attn_implementation {name} needs a CUDA GPU; on this machine use sdpa (the default) or eager")
        if not installed(module.split(".")[0] if module == "flash_attn.cute" else module) and not installed("kernels"):
            raise LlmkitError(f"{src}: attn_implementation {name} needs the {module} package, which is not installed: "
                              f"pip install {pip} (or pip install kernels for the hub's build, or use sdpa)")



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



def check_packed_attention(choice: str, margs, cfg: StageConfig) -> None:
    """The `packed_attention` key against the attention implementation the model will get."""
    from llmkit import batching, modeling

    try:
        batching.resolve_packed_attention(choice, modeling.planned_attention(margs.attn_implementation))
    except ValueError as exc:
        raise LlmkitError(f"{cfg.source}: {exc}") from None


def probe_rewards(funcs, row: dict, completion, completion_ids: list[int]) -> None:
    """Call every reward function once, on one row of the data and one made-up completion: a
    function that needs a column the data lacks (e.g. 'answer' for math_accuracy) fails here,
    before training, not at the first step."""
    extra = {k: [v] for k, v in row.items() if k != "prompt"}
    for f in funcs:
        f(prompts=[row["prompt"]], completions=[completion], completion_ids=[completion_ids], **extra)
