"""Tokenizers, models and adapters: loading from run directories, local paths or the hub,
building small models from a config, 4-bit quantization and LoRA (via TRL's helpers over PEFT).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError
from llmkit.runs import require_run

# ChatML-style template whose assistant turns are wrapped in {% generation %} markers, so TRL's
# assistant_only_loss can mask everything else.  Used by the tokenizer stage.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

# model_type -> the config keys a recipe may set (the rest keep transformers' defaults)
ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gpt2")


def resolve_chat_template(value: str, source: str) -> str:
    """``chatml`` (llmkit's built-in template with generation markers), ``trl:NAME`` (a template
    of TRL's ``trl/chat_templates/NAME.jinja``, e.g. ``trl:qwen2_5_training``), a ``.jinja`` file
    (relative to the working directory, else to the recipe file's directory), or inline Jinja."""
    if value == "chatml":
        return CHAT_TEMPLATE
    if value.startswith("trl:"):
        import trl

        folder = Path(trl.__file__).parent / "chat_templates"
        p = folder / f"{value[4:]}.jinja"
        if not p.is_file():
            known = ", ".join(sorted(f.stem for f in folder.glob("*.jinja")))
            raise LlmkitError(f"{source}: chat_template {value!r}: TRL {trl.__version__} has no template {p.name} (it has: {known})")
        return p.read_text(encoding="utf-8")
    if value.endswith(".jinja"):
        p = Path(value)
        if not p.is_file() and not p.is_absolute() and Path(source).is_file():
            p = Path(source).parent / value
        if not p.is_file():
            raise LlmkitError(f"{source}: chat_template file not found: {value}")
        return p.read_text(encoding="utf-8")
    if "{" not in value:
        raise LlmkitError(f"{source}: chat_template {value!r} is neither 'chatml', 'trl:NAME', a .jinja file nor a Jinja template")
    return value


def has_generation_markers(template: str | None) -> bool:
    """``{% generation %}`` in any whitespace-trim form (``{%- generation -%}`` ...), as TRL checks."""
    import re

    return bool(template) and re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def load_tokenizer(path: str, what: str = "tokenizer", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    require_run(path, what)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LlmkitError(f"cannot load {what} from {path}: {_first_line(exc)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def count_parameters(model_dir: str | Path) -> int:
    """Parameters of a local model directory, summed from its safetensors headers (no weights are
    read); 0 for a hub id or a directory without safetensors files."""
    import math
    import struct

    n = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        n += sum(int(math.prod(v["shape"])) for k, v in header.items() if k != "__metadata__")
    return n


def is_adapter_dir(path: str) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path: str) -> str:
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise LlmkitError(f"{path} is a LoRA adapter without 'base_model_name_or_path'; merge it or give the base model")
    return base


def check_model_source(path: str | None, what: str = "model") -> None:
    """Fail early for missing paths, unfinished runs and adapters whose base is gone."""
    if not path:
        raise LlmkitError(f"no {what} given: set model_name_or_path (a run directory, local path or hub id)")
    require_run(path, what)
    if Path(path).is_dir():
        if is_adapter_dir(path):
            from llmkit.lineage import check_consistent

            check_consistent(path)  # a stacked run saved with the wrong base is refused, not loaded
            base = adapter_base(path)
            if not Path(base).exists() and require_run(base, f"base model of adapter {path}") is None:
                from llmkit import hub

                hub.check_repo(base, "model")  # on the hub, or in the cache when offline; else one line with the fix
        elif not (Path(path) / "config.json").is_file():
            raise LlmkitError(f"{what} {path} has no config.json: not a transformers model directory")
    elif not Path(path).exists() and path.count("/") == 1 and not path.startswith((".", "/", "~", "runs/")):
        from llmkit import hub

        hub.check_repo(path, "model")  # a hub id: exists, readable (gated: token), in the cache when offline


def new_model_config(model_config: dict[str, Any], tokenizer):
    """A transformers config for a from-scratch model; ``model_type`` picks the architecture."""
    from transformers import AutoConfig

    spec = dict(model_config)
    model_type = spec.pop("model_type", "llama")
    if model_type not in ARCHITECTURES:
        raise LlmkitError(f"model_config.model_type {model_type!r} not supported; choose one of {list(ARCHITECTURES)}")
    spec.setdefault("vocab_size", len(tokenizer))
    for key, tok_attr in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "pad_token_id")):
        if getattr(tokenizer, tok_attr, None) is not None:
            spec.setdefault(key, getattr(tokenizer, tok_attr))
    for k, v in spec.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0 and k.endswith(("size", "layers", "heads")):
            raise LlmkitError(f"model_config.{k} must be positive, got {v}")
    known = set(AutoConfig.for_model(model_type).to_dict()) | set(getattr(AutoConfig.for_model(model_type), "attribute_map", {}))
    for k in spec:
        if k not in known:
            import difflib

            close = difflib.get_close_matches(k, sorted(known), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise LlmkitError(f"model_config: unknown key '{k}' for model_type {model_type}.{hint}")
    try:
        cfg = AutoConfig.for_model(model_type, **spec)
    except (ValueError, TypeError) as exc:
        raise LlmkitError(f"invalid model_config: {_first_line(exc)}") from None
    if spec["vocab_size"] < len(tokenizer):
        raise LlmkitError(f"model_config.vocab_size {spec['vocab_size']} is smaller than the tokenizer's {len(tokenizer)} tokens")
    return cfg


DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_model_args(model_args, source: str) -> None:
    """ModelConfig values that would otherwise fail deep inside a library."""
    if model_args.dtype is not None and model_args.dtype not in DTYPES:
        raise LlmkitError(f"{source}: dtype must be one of {list(DTYPES)}, got {model_args.dtype!r}")
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise LlmkitError(f"{source}: choose load_in_4bit or load_in_8bit, not both")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        raise LlmkitError(f"{source}: load_in_4bit/load_in_8bit (QLoRA) need bitsandbytes, which is not installed: "
                          "pip install bitsandbytes, or drop load_in_4bit/load_in_8bit to train LoRA in 16/32 bit")
    if model_args.bnb_4bit_quant_type not in ("nf4", "fp4"):
        raise LlmkitError(f"{source}: bnb_4bit_quant_type must be nf4 or fp4, got {model_args.bnb_4bit_quant_type!r}")


def check_lora_targets(model, lora, source: str) -> None:
    """Every named LoRA target must match a module of the model (PEFT only fails when none do)."""
    if lora is None:
        return
    targets = lora.target_modules
    if targets is None or isinstance(targets, str):  # "all-linear" or a regex: PEFT resolves it
        return
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = sorted(t for t in targets if t not in names and not any(n.endswith(t) for n, _ in model.named_modules()))
    if missing:
        import torch

        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise LlmkitError(f"{source}: lora_target_modules {missing} match no module of the model; "
                          f"linear layers are: {', '.join(linear)} (or use all-linear)")


def default_attention() -> str:
    """On a GPU without attn_implementation in the recipe: FlashAttention-2 when flash-attn is
    installed (padding-free batches need it to keep sequences apart), else PyTorch's SDPA."""
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def planned_attention(requested: str | None = None) -> str:
    """The attention implementation a model is loaded with: the recipe's ``attn_implementation``
    when it names one, else default_attention() on a GPU and transformers' default (SDPA)
    otherwise. The one rule model_init_kwargs, the run layout and the stage checks follow."""
    if requested:
        return requested
    import torch

    return default_attention() if torch.cuda.is_available() else "sdpa"


def default_weight_dtype(model_args):
    """The dtype weights are loaded in when the config names none: float32 on a CPU; bfloat16 on
    a GPU that has it (Ampere and newer); on one without (T4, V100) float16 for a frozen base
    under LoRA/QLoRA (the adapter stays float32, fp16 autocast) and float32 for full training
    (fp16 mixed precision keeps float32 master weights)."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if (model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit) else torch.float32


def model_init_kwargs(model_args, trust_remote_code: bool = False) -> dict[str, Any]:
    """from_pretrained kwargs from TRL's ModelConfig: dtype, attention, 4/8-bit quantization."""
    import torch
    from trl import get_quantization_config

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if model_args.attn_implementation or torch.cuda.is_available():  # on a CPU without one: transformers' own default
        kwargs["attn_implementation"] = planned_attention(model_args.attn_implementation)
    dtype = model_args.dtype
    if dtype not in (None, "auto"):
        kwargs["dtype"] = getattr(torch, dtype)
    elif dtype == "auto":
        kwargs["dtype"] = "auto"
    else:  # recipes set no precision: the device decides (a hub checkpoint's own bf16 is not kept on a CPU or a T4)
        kwargs["dtype"] = default_weight_dtype(model_args)
    if model_args.load_in_4bit or model_args.load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise LlmkitError("load_in_4bit/load_in_8bit need bitsandbytes: pip install bitsandbytes") from None
        kwargs["quantization_config"] = get_quantization_config(model_args)
        kwargs["device_map"] = kbit_device_map()
        if "dtype" not in kwargs or kwargs["dtype"] == "auto":
            kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return kwargs


def kbit_device_map() -> dict[str, Any]:
    """Quantized weights must sit on this process's device from the start."""
    import torch

    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def load_causal_lm(model_args, trust_remote_code: bool = False, trainable_adapter: bool = True):
    """Load a causal LM (or base + adapter when the path is a LoRA run)."""
    from transformers import AutoModelForCausalLM

    path = model_args.model_name_or_path
    check_model_source(path)
    kwargs = model_init_kwargs(model_args, trust_remote_code)
    try:
        if is_adapter_dir(path):
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(adapter_base(path), **kwargs)
            return PeftModel.from_pretrained(base, path, is_trainable=trainable_adapter)
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise LlmkitError(f"cannot load model {path}: {_first_line(exc)}") from None


def peft_config(model_args):
    """LoraConfig from TRL's ModelConfig keys (use_peft, lora_r, lora_alpha, ...), or None."""
    from trl import get_peft_config

    if not model_args.use_peft:
        return None
    if model_args.lora_r is None or model_args.lora_r <= 0:
        raise LlmkitError(f"lora_r must be a positive integer, got {model_args.lora_r}")
    if model_args.lora_alpha is not None and model_args.lora_alpha <= 0:
        raise LlmkitError(f"lora_alpha must be positive, got {model_args.lora_alpha}")
    if not 0 <= model_args.lora_dropout < 1:
        raise LlmkitError(f"lora_dropout must be in [0, 1), got {model_args.lora_dropout}")
    return get_peft_config(model_args)


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


def merge_lora(adapter: str | Path, model_cls=None, **load_kwargs):
    """The one merge: the LoRA run ADAPTER loaded over its base (``model_cls``, default
    AutoModelForCausalLM, ``from_pretrained(base, **load_kwargs)``) and folded into it
    (``merge_and_unload``). `llmkit merge`, the stages that start from a LoRA run (load_merged)
    and the merged copy serve and eval use (serving.merged_copy, through merge_adapter_run)
    all merge here."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    base = (model_cls or AutoModelForCausalLM).from_pretrained(adapter_base(str(adapter)), **load_kwargs)
    adapter_cfg = PeftConfig.from_pretrained(str(adapter))
    adapter_cfg.task_type = None  # a causal-LM adapter also applies to the same backbone under another head
    return PeftModel.from_pretrained(base, str(adapter), config=adapter_cfg).merge_and_unload()


def merge_adapter_run(adapter: str, output_dir: str, dtype: str = "bfloat16", overwrite: bool = False) -> Path:
    """`llmkit merge`: fold a LoRA run into its base weights and save a standalone model run."""
    import time
    from dataclasses import dataclass

    import torch

    from llmkit import progress, runs
    from llmkit.config import StageConfig

    @dataclass
    class MergeArgs:
        adapter: str
        output_dir: str
        dtype: str

    started = time.time()
    require_run(adapter, "adapter run")
    if not Path(adapter).is_dir() or not is_adapter_dir(adapter):
        raise LlmkitError(f"{adapter} is not a LoRA adapter run (no adapter_config.json)")
    check_model_source(adapter, "adapter run")  # also refuses a stacked run saved over the wrong base
    base = adapter_base(adapter)
    check_model_source(base, f"base model of {adapter}")
    runs.check_output_dir(output_dir, overwrite)
    explicit = {"adapter": adapter, "output_dir": output_dir, "dtype": dtype}
    cfg = StageConfig(args=[MergeArgs(adapter, output_dir, dtype)], explicit=explicit, source="llmkit merge")
    staging = runs.open_staging(output_dir, cfg, "merge", overwrite)
    with progress.bar(3, f"llmkit merge: {adapter} into its base", unit="step") as bar:
        bar.set_postfix_str("loading the base and merging the adapter")
        merged = merge_lora(adapter, dtype=getattr(torch, dtype))
        bar.update()
        bar.set_postfix_str("saving")
        merged.save_pretrained(staging)
        bar.update()
        tok_src = adapter if (Path(adapter) / "tokenizer_config.json").exists() else base
        load_tokenizer(tok_src).save_pretrained(staging)
        bar.update()
    from llmkit.lineage import new_run_lineage

    manifest = runs.build_manifest("merge", cfg, started, {"adapter": adapter, "base": base}, {"dtype": dtype},
                                   extra={"lineage": new_run_lineage(adapter, output_dir, "merge", "full")})
    out = runs.finalize(staging, output_dir, manifest)
    from llmkit.lineage import describe

    print(f"llmkit merge: {describe(adapter)} -> {out} ({dtype})")
    return out


def merged_copy(adapter: str | Path) -> str:
    """The LoRA run ADAPTER merged into its base as a standalone model run (merge_adapter_run),
    cached under llmkit's cache dir: made once per version of the adapter, nothing written next
    to the run. What serve --merged, eval (vLLM on CPU) and export read for a LoRA run."""
    import hashlib
    import sys

    import torch

    from llmkit.runs import cache_dir

    src = Path(adapter).resolve()
    weights = next(iter(sorted(src.glob("adapter_model.*"))), src / "adapter_config.json")
    key = hashlib.sha1(f"{src}:{weights.stat().st_mtime_ns}:{weights.stat().st_size}".encode()).hexdigest()[:12]
    out = cache_dir() / "merged" / f"{src.name}-{key}"
    if not (out / "manifest.json").is_file():
        print(f"llmkit: merging the LoRA run {adapter} into {out}", file=sys.stderr, flush=True)
        merge_adapter_run(str(adapter), str(out), dtype="bfloat16" if torch.cuda.is_available() else "float32", overwrite=True)
    return str(out)


def load_merged(model_args, trust_remote_code: bool = False, model_cls=None, **extra):
    """Load ``model_name_or_path`` as a plain model: a LoRA run directory is folded into its
    base (so the result *is* the fine-tuned model, e.g. the SFT policy that DPO/GRPO/PPO start
    from and compare against).  ``model_cls`` defaults to AutoModelForCausalLM; the reward stage
    passes AutoModelForSequenceClassification."""
    from transformers import AutoModelForCausalLM

    model_cls = model_cls or AutoModelForCausalLM
    path = model_args.model_name_or_path
    check_model_source(path)
    kwargs = model_init_kwargs(model_args, trust_remote_code)
    if is_adapter_dir(path) and "quantization_config" in kwargs:
        raise LlmkitError(f"{path} is a LoRA run: merge it first (`llmkit merge {path} --output_dir ...`) to train on it in 4/8 bit")
    try:
        if is_adapter_dir(path):
            return merge_lora(path, model_cls, **kwargs, **extra).requires_grad_(True)  # PEFT froze the base weights
        return model_cls.from_pretrained(path, **kwargs, **extra)
    except (OSError, ValueError) as exc:
        raise LlmkitError(f"cannot load model {path}: {_first_line(exc)}") from None


def prompt_text(tokenizer, prompt) -> str:
    """A prompt (plain text or chat messages) as the text the model continues."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus the ChatML end-of-turn token when the vocabulary has it."""
    ids = {tokenizer.eos_token_id}
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(i for i in ids if i is not None)


def generate_completions(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int = 16,
                         desc: str | None = None, sampling: dict | None = None, n: int = 1) -> list[str]:
    """Greedy completions for prompts (text or chat messages), batched with left padding;
    ``desc`` names the progress bar (one step per prompt).  With ``sampling`` (``generate``'s
    sampling keys: temperature, top_p, top_k, min_p) it samples ``n`` completions per prompt
    instead, returned prompt by prompt (the n of the first prompt, then the second's, ...)."""
    import torch

    from llmkit import progress

    texts = [prompt_text(tokenizer, p) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    was_training = model.training
    model.eval()
    bar = progress.bar(len(texts), desc, unit="prompt")
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                how = {"do_sample": True, **sampling, "num_return_sequences": n} if sampling else {"do_sample": False}
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=stop_token_ids(tokenizer), **how)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            bar.update(len(texts[i : i + batch_size]))
    finally:
        bar.close()
        tokenizer.padding_side = side
        model.train(was_training)
    return [t.strip() for t in out]
