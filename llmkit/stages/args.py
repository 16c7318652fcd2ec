"""The data keys every stage shares, declared once (each stage's docstring says which columns
its data needs).  ``DatasetArgs``: the training and held-out sources (the tokenizer stage);
``DataArgs`` adds the held-out split and the tokenizer (every training stage).  A stage
subclasses one of them with its own keys, or lists it as it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DatasetArgs:
    datasets: list = field(default_factory=list, metadata={
        "help": "Training data: files or directories (jsonl, json, csv, parquet, txt), hub ids, or mixtures "
                "({path, weight, format, columns}); the columns read: see above."})
    eval_datasets: list = field(default_factory=list, metadata={
        "help": "Held-out data in the same layout, never trained on: the stage's before/after metrics are measured on it."})


@dataclass
class DataArgs(DatasetArgs):
    eval_split_size: float = field(default=0.05, metadata={
        "help": "When eval_datasets is empty: the fraction (<1) or count (>=1) of the data held out instead; 0 for none."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={
        "help": "Tokenizer (a tokenizer run, a path or a hub id). Default: model_name_or_path's (an adapter run's base when it has none)."})


def tokenizer_path(a: DataArgs, model: str | None) -> str | None:
    """The tokenizer a stage loads: ``tokenizer_name_or_path``, else the model's; for an
    adapter run saved without a tokenizer, its base model's."""
    from llmkit import modeling

    path = a.tokenizer_name_or_path or model
    if not a.tokenizer_name_or_path and path and modeling.is_adapter_dir(path) and not (Path(path) / "tokenizer_config.json").exists():
        return modeling.adapter_base(path)
    return path


def packed_attention_field():
    """The `packed_attention` key of the stages with padding-free batches (sft, dpo)."""
    return field(default="auto", metadata={
        "help": "How padding-free batches keep their sequences apart: auto (SDPA on each sequence on its own, "
                "FlashAttention's varlen kernel when attn_implementation is flash_attention_*), per_sequence, or mask "
                "(transformers' dense block-diagonal mask over the whole row)."})
