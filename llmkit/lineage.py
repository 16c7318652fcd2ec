"""Stacked runs: what a run was trained on, and one adapter that *is* the trained model.

A LoRA DPO/GRPO stage over a LoRA SFT run trains a new adapter over the SFT model folded into
its base (``pretrain + sft``).  PEFT saves that adapter with ``base_model_name_or_path: pretrain``,
so anything that reads ``adapter_config.json`` (llmkit's eval/serve/merge/chat, vLLM,
``AutoPeftModelForCausalLM``) would load it over the pretrained model alone — a model nobody
trained.  Folding is linear, so the stacked model is exactly one LoRA over the original base:

    W + s1·B1·A1 + s2·B2·A2  =  W + [B1 B2]·[s1·A1; s2·A2]      (rank r1 + r2, scaling 1)

``compose`` writes that adapter (PEFT's ``add_weighted_adapter(combination_type="cat")`` does
the same in memory, but needs the base model loaded; this works on the adapter files alone).
The stage's own trained adapter is kept in ``<run>/delta/`` with a ``base_model_name_or_path``
that no loader can resolve, so it fails loudly instead of loading over the wrong base.

Every run's manifest records its ``lineage``: the chain of runs (base model, adapters) it was
trained on, ending with itself; consumers print it and check it against ``adapter_config.json``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError

DELTA_DIR = "delta"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# stages whose LoRA run, trained over a LoRA run, is a stacked adapter
STACKING_STAGES = ("dpo", "grpo")


def _adapter_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "adapter_config.json").read_text())


def _is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _manifest(path: str | Path) -> dict[str, Any] | None:
    from llmkit.runs import read_manifest

    return read_manifest(path) if Path(path).is_dir() else None


def lineage(path: str) -> list[dict[str, Any]]:
    """The chain a model was trained on, base first: ``[{"path", "stage", "weights"}, ...]``.
    Read from the run's manifest when it records one, else derived (a plain model or hub id is
    its own base; an adapter sits on ``base_model_name_or_path``)."""
    m = _manifest(path)
    if m and m.get("lineage"):
        return m["lineage"]
    stage = (m or {}).get("stage")
    if _is_adapter(path):
        base = _adapter_config(path).get("base_model_name_or_path") or "?"
        return [*lineage(base), {"path": str(path), "stage": stage, "weights": "lora"}]
    return [{"path": str(path), "stage": stage, "weights": "full"}]


def describe(path: str) -> str:
    """``runs/tiny-es/pretrain -> runs/tiny-es/sft (LoRA) -> runs/tiny-es/dpo (LoRA)``."""
    parts = []
    for step in lineage(path):
        w = step.get("weights", "full")
        parts.append(step["path"] + ("" if w == "full" else " (LoRA)"))
    return " -> ".join(parts)


def is_stacked(input_path: str | None, lora) -> bool:
    """A stage that trains a new LoRA (``lora`` is its LoraConfig) over a LoRA run."""
    return lora is not None and bool(input_path) and _is_adapter(input_path)


def weights_kind(input_path: str | None, lora, stacks: bool) -> str:
    """What a stage's run saves: "full", "lora", "lora (stacked)" (a new adapter over the input
    adapter, composed with it: dpo, grpo) or "lora (continued)" (the input adapter trained
    further: sft, pretrain and ppo load a LoRA run's adapter as trainable)."""
    if input_path and _is_adapter(input_path):
        return "lora (stacked)" if stacks and lora is not None else ("lora (continued)" if not stacks else "full")
    return "lora" if lora is not None else "full"


def new_run_lineage(input_path: str, output_dir: str, stage: str, weights: str) -> list[dict[str, Any]]:
    """The lineage a stage records for its run: its input's chain plus itself.  ``weights`` is
    "full", "lora", "lora (continued)" — the input adapter trained further, replacing it —, or
    "lora (stacked)" — a new adapter over the input adapter, composed with it."""
    chain = [dict(s) for s in lineage(input_path)] if input_path else []
    if weights == "lora (continued)" and chain:
        chain[-1]["continued_by"] = str(output_dir)
    return [*chain, {"path": str(output_dir), "stage": stage, "weights": weights}]


def check_consistent(path: str) -> None:
    """Refuse a run whose adapter would not give the model its lineage says it is: a stacked
    LoRA run made by an llmkit that saved only its own adapter (over the wrong base)."""
    if not _is_adapter(path):
        return
    m = _manifest(path)
    if not m or m.get("stage") not in STACKING_STAGES:
        return
    policy = (m.get("inputs") or {}).get("policy")
    base = _adapter_config(path).get("base_model_name_or_path")
    if "lineage" not in m:
        if policy and _is_adapter(policy) and m.get("metrics", {}).get("mode") == "lora":
            raise LlmkitError(
                f"{path} is a LoRA {m['stage']} run trained over the LoRA run {policy}, saved by an older llmkit with only its "
                f"own adapter: loaded over {base} it is not the model that was trained. Train it again "
                f"(llmkit {m['stage']} --config <its config> --overwrite, or llmkit run RECIPE --force --from {m['stage']})")
        return
    full = [s["path"] for s in m["lineage"][:-1] if s.get("weights") == "full"]
    if full and base and Path(full[-1]) != Path(base):  # the adapter sits on the last full model of its chain
        raise LlmkitError(f"{path}: adapter_config.json names the base {base!r} but the run was trained over "
                          f"{full[-1]!r} (see its manifest's lineage); the run directory was edited — train it again")


# ----------------------------------------------------------------------------- composition


def _plain_lora(cfg: dict[str, Any], path: str | Path) -> None:
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')}")
    if cfg.get("use_dora"):
        problems.append("use_dora")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias: {cfg.get('bias')}")
    if cfg.get("modules_to_save"):
        problems.append("modules_to_save")
    if cfg.get("target_parameters"):
        problems.append("target_parameters")
    if cfg.get("trainable_token_indices"):
        problems.append("trainable_token_indices")
    if problems:
        raise LlmkitError(
            f"{path}: a LoRA stage stacked on this adapter needs a plain LoRA adapter, but it uses {', '.join(problems)}. "
            f"Fold it into its base first (llmkit merge {path} --output_dir <dir>) and train on that directory")


def check_stackable(upstream: str) -> None:
    """Before training: an adapter that a new LoRA can be stacked on (see ``compose``)."""
    if _is_adapter(upstream):
        _plain_lora(_adapter_config(upstream), upstream)


def _load_tensors(path: Path) -> dict[str, Any]:
    if (path / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(path / "adapter_model.safetensors"))
    import torch

    return torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)


def _modules(tensors: dict[str, Any]) -> dict[str, tuple[str, Any, Any]]:
    """module name -> (kind, A, B) for every LoRA pair in a PEFT state dict; kind is "" for
    linear layers (``lora_A.weight``) and "embedding_" for embeddings (``lora_embedding_A``)."""
    out: dict[str, tuple[str, Any, Any]] = {}
    for key, a in tensors.items():
        for kind, a_suffix, b_suffix in (("", ".lora_A.weight", ".lora_B.weight"),
                                         ("embedding_", ".lora_embedding_A", ".lora_embedding_B")):
            if key.endswith(a_suffix):
                name = key[: -len(a_suffix)]
                b = tensors.get(name + b_suffix)
                if b is None:
                    raise LlmkitError(f"adapter weights have {key} without {name + b_suffix}")
                out[name] = (kind, a, b)
    other = [k for k in tensors if not any(s in k for s in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B"))]
    if other:
        raise LlmkitError(f"adapter weights hold tensors that are not LoRA pairs ({other[0]}, ...): cannot compose them")
    return out


def _scale(cfg: dict[str, Any], module: str, r: int) -> float:
    from peft.utils.other import get_pattern_key

    name = module.removeprefix("base_model.model.")
    pattern = cfg.get("alpha_pattern") or {}
    alpha = pattern.get(get_pattern_key(list(pattern), name), cfg.get("lora_alpha") or 8)
    return alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def compose(first: str | Path, second: str | Path, out: str | Path) -> dict[str, Any]:
    """Write to ``out`` one LoRA adapter over ``first``'s base that equals ``first`` followed by
    ``second`` (an adapter trained over the model ``first`` folded into its base).

    Per module the A matrices (times their scaling) are stacked along the rank and the B
    matrices side by side; modules only one adapter touches get zeros in the other's block. The
    rank is the sum of the two largest ranks for every module (zero-padded), alpha = rank, so
    PEFT's scaling is 1 and the product equals the sum of the two updates.  Returns the config."""
    import torch
    from safetensors.torch import save_file

    first, second, out = Path(first), Path(second), Path(out)
    c1, c2 = _adapter_config(first), _adapter_config(second)
    _plain_lora(c1, first)
    _plain_lora(c2, second)
    m1, m2 = _modules(_load_tensors(first)), _modules(_load_tensors(second))
    r1 = max((a.shape[0] for _, a, _ in m1.values()), default=0)
    r2 = max((a.shape[0] for _, a, _ in m2.values()), default=0)
    rank = r1 + r2
    tensors: dict[str, Any] = {}
    for name in sorted(set(m1) | set(m2)):
        kinds = {m[name][0] for m in (m1, m2) if name in m}
        if len(kinds) > 1:
            raise LlmkitError(f"cannot compose adapters: {name} is a linear layer in one and an embedding in the other")
        kind = kinds.pop()
        ref_a, ref_b = (m1.get(name) or m2[name])[1:]
        a_new = torch.zeros(rank, ref_a.shape[1], dtype=torch.float32)
        b_new = torch.zeros(ref_b.shape[0], rank, dtype=torch.float32)
        for offset, cfg, mods in ((0, c1, m1), (r1, c2, m2)):
            if name in mods:
                _, a, b = mods[name]
                r = a.shape[0]
                a_new[offset : offset + r] = a.float() * _scale(cfg, name, r)
                b_new[:, offset : offset + r] = b.float()
        suffix_a, suffix_b = (".lora_A.weight", ".lora_B.weight") if kind == "" else (".lora_embedding_A", ".lora_embedding_B")
        tensors[name + suffix_a], tensors[name + suffix_b] = a_new.contiguous(), b_new.contiguous()
    leaves = sorted({name.rsplit(".", 1)[-1] for name in set(m1) | set(m2)})
    cfg = dict(c2)
    cfg.update({
        "base_model_name_or_path": c1.get("base_model_name_or_path"),
        "r": rank, "lora_alpha": rank, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
        "target_modules": leaves, "layers_to_transform": None, "layers_pattern": None, "inference_mode": True,
    })
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


def _unloadable(upstream: str, output_dir: str) -> str:
    """A base_model_name_or_path no loader resolves (spaces are invalid in hub ids), that says why."""
    return f"{upstream} folded into its base (this delta alone is not a model: load {output_dir})"


def stack_saved_adapter(staging: Path, upstream: str, output_dir: str) -> dict[str, Any] | None:
    """After a LoRA stage over the LoRA run ``upstream`` saved its adapter into ``staging``:
    move that adapter to ``staging/delta/`` (marked unloadable on its own) and write in its place
    the composed adapter over ``upstream``'s base.  Checkpoints keep training the delta (resume
    does not read the base path) but are marked the same way.  Main process only."""
    staging = Path(staging)
    delta = staging / DELTA_DIR
    delta.mkdir(exist_ok=True)
    for name in ADAPTER_FILES:
        if (staging / name).exists():
            shutil.move(str(staging / name), str(delta / name))
    marker = _unloadable(upstream, output_dir)
    for cfg_file in [delta / "adapter_config.json", *(staging / "checkpoints").glob("checkpoint-*/adapter_config.json")]:
        cfg = json.loads(cfg_file.read_text())
        cfg["base_model_name_or_path"] = marker
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    composed = compose(upstream, delta, staging)
    print(f"llmkit: stacked adapter: {describe(upstream)} + this run -> one LoRA of rank {composed['r']} over "
          f"{composed['base_model_name_or_path']} (the stage's own adapter is in {output_dir}/{DELTA_DIR})", flush=True)
    return composed
