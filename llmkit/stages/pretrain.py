"""`llmkit pretrain --config recipes/tiny-es/pretrain.yaml`: causal-LM pretraining from a config, or
continued pretraining of a model.

Features (keys):
  - from scratch (`model_config`: llama, qwen2, qwen3, mistral, gemma, gpt2) or continued (`model_name_or_path`)
  - EOS-joined packing into `block_size` blocks (no padding); LoRA for continued pretraining (`use_peft`)
  - held-out perplexity before/after (`eval_datasets`, `eval_split_size`); checkpoints and resume (`save_steps`)
  - multi-process / multi-node under `accelerate launch`; `report_to: tensorboard | trackio`

config -> validate -> read text (a 'text' column) -> tokenize, append EOS, pack into blocks
of `block_size` (no padding at all) -> build the model (`model_config` from scratch, or `model_name_or_path`,
optionally with LoRA) -> transformers Trainer -> held-out perplexity before and after -> save
run directory (model + tokenizer, metrics.jsonl, loss.png, manifest.json).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments
from trl import ModelConfig

from llmkit import data, lineage, modeling, progress, runs
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import checks, common, devices
from llmkit.stages.args import DataArgs, tokenizer_path

STAGE = "pretrain"
# the stage's key numbers, (label, metric before training, metric after): manifest "summary", `llmkit run`, reports
SUMMARY = (("held-out perplexity", "eval_ppl_before", "eval_ppl"),)


@dataclass
class PretrainArgs(DataArgs):
    model_config: dict | None = field(default=None, metadata={
        "help": "Build a new model: {model_type: llama|qwen2|..., hidden_size, num_hidden_layers, ...}. "
                "Omit to continue pretraining model_name_or_path."})
    block_size: int = field(default=512, metadata={"help": "Tokens per packed training sequence."})


CLASSES = [PretrainArgs, ModelConfig, TrainingArguments]
DOC = __doc__


def defaults(explicit: dict) -> dict:
    return devices.trainer_defaults(explicit, {"learning_rate": 3e-4, "eval_strategy": "steps", "eval_steps": 100, "warmup_steps": 10,
                                               "eval_split_size": 0.02})


def pack(texts: list[str], tokenizer, block_size: int) -> list[dict]:
    """Tokenize, join with EOS, cut into full blocks (the tail shorter than a block is dropped)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n = len(ids) // block_size
    blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(n)]
    return [{"input_ids": b, "labels": b} for b in blocks]


def main(cfg: StageConfig, overwrite: bool = False) -> Path:
    started = time.time()
    a: PretrainArgs = cfg.get(PretrainArgs)
    margs: ModelConfig = cfg.get(ModelConfig)
    targs: TrainingArguments = cfg.get(TrainingArguments)

    # validate everything before touching the output directory
    checks.check_training_args(targs, cfg)
    modeling.check_model_args(margs, cfg.source)
    if a.block_size < 8:
        raise LlmkitError(f"{cfg.source}: block_size must be at least 8, got {a.block_size}")
    if a.model_config is None and not margs.model_name_or_path:
        raise LlmkitError(f"{cfg.source}: set model_config (new model) or model_name_or_path (continued pretraining)")
    if a.model_config is not None and margs.model_name_or_path:
        raise LlmkitError(f"{cfg.source}: set either model_config or model_name_or_path, not both")
    tok_path = tokenizer_path(a, margs.model_name_or_path)
    if not tok_path:
        raise LlmkitError(f"{cfg.source}: tokenizer_name_or_path is required with model_config")
    if margs.model_name_or_path:
        modeling.check_model_source(margs.model_name_or_path)
    tokenizer = modeling.load_tokenizer(tok_path)
    model_cfg = modeling.new_model_config(a.model_config, tokenizer) if a.model_config is not None else None
    lora = modeling.peft_config(margs)
    runs.check_output_dir(targs.output_dir, overwrite)
    rows, eval_rows, provenance = data.load_splits(a.datasets, a.eval_datasets, "text", targs.seed)
    train_ds, eval_ds = data.train_eval_split(rows, eval_rows, a.eval_split_size, targs.seed)
    train_blocks = pack(list(train_ds["text"]), tokenizer, a.block_size)
    eval_blocks = pack(list(eval_ds["text"]), tokenizer, a.block_size) if eval_ds is not None else []
    if not train_blocks:
        raise LlmkitError(f"the training text gives fewer than block_size={a.block_size} tokens; lower block_size or add data")
    if eval_ds is not None and not eval_blocks:
        raise LlmkitError(f"the held-out text gives fewer than block_size={a.block_size} tokens; lower block_size or add held-out text")

    import torch
    from transformers import AutoModelForCausalLM, Trainer, default_data_collator, set_seed

    set_seed(targs.seed)
    if model_cfg is not None:
        model = AutoModelForCausalLM.from_config(model_cfg, dtype=torch.float32)
    else:
        model = modeling.load_causal_lm(margs)
    if lora is not None:
        from peft import get_peft_model

        modeling.check_lora_targets(model, lora, cfg.source)
        model = get_peft_model(model, lora)
    n_params = sum(p.numel() for p in model.parameters())

    # ---- from here on, everything is written into the staging directory
    staging, output_dir = common.open_trainer_staging(targs, cfg, STAGE, overwrite, model, has_eval=bool(eval_blocks))
    if runs.is_main_process():
        print(f"llmkit pretrain: {n_params / 1e6:.2f}M parameters, {len(train_blocks)} train blocks x {a.block_size} tokens", flush=True)

    from datasets import Dataset

    eval_dataset = Dataset.from_list(eval_blocks) if eval_blocks else None
    trainer = common.build_trainer(
        staging, cfg, Trainer,
        model=model,
        args=targs,
        train_dataset=Dataset.from_list(train_blocks),
        eval_dataset=eval_dataset,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[runs.make_metrics_callback(staging / "metrics.jsonl")],
    )
    metrics: dict = {"parameters": n_params, "train_tokens": len(train_blocks) * a.block_size}
    if eval_dataset is not None:
        progress.announce("llmkit pretrain: held-out perplexity (before)")
        before = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss_before=before, eval_ppl_before=math.exp(min(before, 50)))
    result = common.train(trainer, staging)
    metrics["train_loss"] = result.training_loss
    if eval_dataset is not None:
        after = common.final_eval_loss(trainer)
        metrics.update(eval_loss=after, eval_ppl=math.exp(min(after, 50)))
    trainer.save_model(str(staging))
    if runs.is_main_process():
        tokenizer.save_pretrained(staging)
    inputs = {"model": margs.model_name_or_path or "from model_config", "tokenizer": tok_path, **provenance}
    return common.finish_training_stage(STAGE, cfg, staging, output_dir, started, inputs, metrics, trainer.state.global_step,
                                        lineage=lineage.new_run_lineage(margs.model_name_or_path, output_dir, STAGE,
                                                                        lineage.weights_kind(margs.model_name_or_path, lora, False)))
