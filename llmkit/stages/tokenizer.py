"""`llmkit tokenizer --config recipes/tiny-es/tokenizer.yaml`: train a byte-level BPE (or Unigram)
tokenizer on Spanish text.

Features (keys):
  - BPE or Unigram (`model_type`), vocabulary size (`vocab_size`), minimum frequency (`min_frequency`)
  - special tokens and a ChatML chat template with {% generation %} markers (`chat_template`)
  - fertility and round-trip rate on held-out text (`eval_datasets`; the old `heldout_datasets` is still read)

config -> validate -> read text (a 'text' column) -> train with `tokenizers` -> wrap as an HF
tokenizer with special tokens and a chat template carrying {% generation %} markers ->
fertility (tokens per word) and round-trip rate on held-out text -> save run directory.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmkit import data, runs
from llmkit.config import LlmkitError, StageConfig
from llmkit.modeling import SPECIAL_TOKENS, has_generation_markers, resolve_chat_template
from llmkit.stages.args import DatasetArgs

STAGE = "tokenizer"
# the stage's key numbers, (label, metric before training, metric after): manifest "summary", `llmkit run`, reports
SUMMARY = (("vocabulary", None, "vocab_size"), ("fertility (tokens per word)", None, "fertility"),
           ("round-trip rate", None, "roundtrip_rate"))


@dataclass
class TokenizerArgs(DatasetArgs):
    output_dir: str = field(default="", metadata={"help": "Run directory to write (refused if it holds a finished run)."})
    heldout_datasets: list = field(default_factory=list, metadata={"help": "Deprecated: the old name of eval_datasets (still read)."})
    model_type: str = field(default="bpe", metadata={"help": "bpe (byte-level BPE, never <unk>) or unigram (SentencePiece-style)."})
    vocab_size: int = field(default=8000, metadata={"help": "Target vocabulary size, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "BPE: minimum pair frequency for a merge."})
    special_tokens: list = field(default_factory=lambda: list(SPECIAL_TOKENS), metadata={
        "help": "Special tokens; the first is EOS, the second PAD."})
    chat_template: str | None = field(default=None, metadata={
        "help": "Jinja chat template (inline or a .jinja path). Default: ChatML with {% generation %} markers."})
    model_max_length: int = field(default=2048, metadata={"help": "model_max_length stored in the tokenizer."})
    seed: int = field(default=42, metadata={"help": "Random seed."})


CLASSES = [TokenizerArgs]
DOC = __doc__


def validate(a: TokenizerArgs, cfg: StageConfig) -> str:
    if not a.output_dir:
        raise LlmkitError(f"{cfg.source}: output_dir is required")
    if a.model_type not in ("bpe", "unigram"):
        raise LlmkitError(f"{cfg.source}: model_type must be 'bpe' or 'unigram', got {a.model_type!r}")
    if a.vocab_size < 256 + len(a.special_tokens) and a.model_type == "bpe":
        raise LlmkitError(f"{cfg.source}: vocab_size must be at least {256 + len(a.special_tokens)} for byte-level BPE")
    if a.vocab_size < 10:
        raise LlmkitError(f"{cfg.source}: vocab_size too small ({a.vocab_size})")
    if len(a.special_tokens) < 2:
        raise LlmkitError(f"{cfg.source}: special_tokens needs at least an EOS and a PAD token")
    template = resolve_chat_template(a.chat_template or "chatml", cfg.source)
    if not has_generation_markers(template):
        print("llmkit tokenizer: warning: the chat template has no {% generation %} markers; assistant_only_loss will be refused")
    return template


def train_tokenizer(texts: list[str], a: TokenizerArgs):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if a.model_type == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=a.vocab_size,
            min_frequency=a.min_frequency,
            special_tokens=a.special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=True,
        )
    else:
        unk = "<unk>"
        specials = a.special_tokens + ([unk] if unk not in a.special_tokens else [])
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=a.vocab_size, special_tokens=specials, unk_token=unk, show_progress=True)
    tok.normalizer = normalizers.NFC()  # "é" typed as e + combining accent and as é encode alike
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def wrap(tok, a: TokenizerArgs, template: str):
    from transformers import PreTrainedTokenizerFast

    eos, pad, *rest = a.special_tokens
    kwargs = {"unk_token": "<unk>"} if a.model_type == "unigram" else {}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=rest,
        model_max_length=a.model_max_length,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    hf.chat_template = template
    return hf


WORD = re.compile(r"\w+", re.UNICODE)


def fertility(hf_tok, texts: list[str]) -> dict[str, float]:
    """Tokens per word and characters per token on ``texts``; share of texts that round-trip."""
    n_tokens = n_words = n_chars = exact = 0
    for t in texts:
        ids = hf_tok(t, add_special_tokens=False)["input_ids"]
        n_tokens += len(ids)
        n_words += len(WORD.findall(t))
        n_chars += len(t)
        exact += hf_tok.decode(ids) == t
    return {
        "fertility": n_tokens / max(n_words, 1),
        "chars_per_token": n_chars / max(n_tokens, 1),
        "roundtrip_rate": exact / max(len(texts), 1),
        "heldout_texts": len(texts),
    }


def main(cfg: StageConfig, overwrite: bool = False) -> Path:
    started = time.time()
    a: TokenizerArgs = cfg.get(TokenizerArgs)
    template = validate(a, cfg)
    runs.check_output_dir(a.output_dir, overwrite)
    rows, provenance = data.load_rows(a.datasets, "text", a.seed)
    held_key, held = ("eval_datasets", a.eval_datasets)
    if a.heldout_datasets:
        if a.eval_datasets:
            raise LlmkitError(f"{cfg.source}: set eval_datasets only (heldout_datasets is its old name)")
        print(f"llmkit tokenizer: heldout_datasets is deprecated, the key is eval_datasets (as in every stage); rename it in {cfg.source}",
              flush=True)
        held_key, held = "heldout_datasets", a.heldout_datasets
    held_rows, held_prov = data.load_rows(held, "text", a.seed, held_key) if held else ([], [])
    staging = runs.open_staging(a.output_dir, cfg, STAGE, overwrite)
    texts = [r["text"] for r in rows]
    print(f"llmkit tokenizer: training {a.model_type} (vocab {a.vocab_size}) on {len(texts)} texts", flush=True)
    hf = wrap(train_tokenizer(texts, a), a, template)
    hf.save_pretrained(staging)
    metrics = {"vocab_size": len(hf)}
    if held_rows:
        metrics.update(fertility(hf, [r["text"] for r in held_rows]))
    from llmkit.stages import summary

    manifest = runs.build_manifest(STAGE, cfg, started, {"datasets": provenance, "eval_datasets": held_prov}, metrics,
                                   extra={"summary": summary(STAGE, metrics)})
    out = runs.finalize(staging, a.output_dir, manifest)
    shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    print(f"llmkit tokenizer: done in {time.time() - started:.1f}s -> {out}  ({shown})", flush=True)
    return out
