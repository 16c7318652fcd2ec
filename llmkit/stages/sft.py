"""`llmkit sft --config recipes/tiny-es/sft.yaml`: supervised fine-tuning with TRL's SFTTrainer —
full, LoRA or QLoRA.

Features (keys):
  - full, LoRA (`use_peft`, `lora_r`, `lora_alpha`, `lora_target_modules`), QLoRA (`load_in_4bit`)
  - messages, prompt/completion, and alpaca / dolly / ShareGPT layouts (`datasets` entries with format: ...)
  - loss on the answers only (`assistant_only_loss`, `completion_only_loss`), the model's own chat
    template through TRL or `chat_template` (chatml, a .jinja file, trl:NAME)
  - packing (`packing`, `padding_free`); held-out loss and greedy samples before/after (`sample_prompts`)
  - device-chosen precision, attention and optimizer; `accelerate launch` (DDP, FSDP, ZeRO); resume

config -> validate (data layout and every local row, chat template markers when
assistant_only_loss is on, model/adapter paths, LoRA values) -> load model (4-bit NF4 when
load_in_4bit) -> SFTTrainer (conversational `messages` or prompt/completion data, packing as
an option) -> save model or adapter + tokenizer -> greedy answers to held-out prompts
(samples.jsonl: exact match, and format match
with numbers/names/quotes masked, before and after training) -> run directory.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, SFTConfig

from llmkit import batching, data, lineage, modeling, progress, runs, stats
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import checks, common, devices
from llmkit.stages.args import DataArgs, packed_attention_field, tokenizer_path

STAGE = "sft"
# the stage's key numbers, (label, metric before training, metric after): manifest "summary", `llmkit run`, reports
SUMMARY = (("held-out answer loss", "eval_loss_before", "eval_loss"), ("exact answers", "sample_exact_match_before", "sample_exact_match"),
           ("answers in the trained format", "sample_format_match_before", "sample_format_match"))
COUNT = "sample_count"  # how many held-out chats the shares above are measured on (their noise, llmkit/stats.py)
PAIRED = "sample_exact_match"  # the row whose items are also compared one by one before/after


@dataclass
class SftArgs(DataArgs):
    chat_template: str | None = field(default=None, metadata={
        "help": "Replace the tokenizer's chat template: 'chatml' (built-in, with generation markers), a .jinja path or inline Jinja."})
    sample_prompts: int = field(default=8, metadata={"help": "After training, answer this many held-out prompts greedily (samples.jsonl)."})
    sample_max_new_tokens: int = field(default=48, metadata={"help": "Token budget of those answers."})
    packed_attention: str = packed_attention_field()


CLASSES = [SftArgs, ModelConfig, SFTConfig]
DOC = __doc__


def defaults(explicit: dict) -> dict:
    return devices.trainer_defaults(explicit, {"eval_strategy": "steps", "eval_steps": 100, **batching.defaults(STAGE, explicit)})


def validate_template(tokenizer, sargs: SFTConfig, layout: str, cfg: StageConfig) -> None:
    from llmkit.modeling import has_generation_markers

    if layout == "messages" and not tokenizer.chat_template:
        raise LlmkitError(f"{cfg.source}: conversational data needs a chat template; the tokenizer has none (set chat_template)")
    if sargs.assistant_only_loss:
        if layout != "messages":
            raise LlmkitError(
                f"{cfg.source}: assistant_only_loss needs conversational 'messages' data; "
                "for prompt/completion data use completion_only_loss"
            )
        if not has_generation_markers(tokenizer.chat_template):
            # TRL swaps in its training variant (with the markers) of a model's own template it
            # knows (Qwen2.5, Qwen3, Gemma 3, Llama 3, Phi-3...: trl/chat_templates/*_training.jinja)
            # for tokenizing only; the tokenizer saved with the run keeps the model's template
            from trl.chat_template_utils import get_training_chat_template

            try:
                get_training_chat_template(tokenizer)
            except Exception:  # ValueError: not a template TRL knows; TemplateError: one it cannot render
                raise LlmkitError(
                    f"{cfg.source}: assistant_only_loss is on but the chat template has no {{% generation %}} markers "
                    "and TRL has no training variant of it. "
                    "Use a template that wraps assistant turns in {% generation %}...{% endgeneration %} "
                    "(set chat_template: a .jinja file, trl:NAME or chatml) or turn assistant_only_loss off."
                ) from None


_QUOTED = re.compile(r"«[^»]*»")
_NUMBER = re.compile(r"\d[\d.,]*\d|\d")


def answer_shape(text: str) -> str:
    """An answer with its content masked: «quoted» -> «Q», numbers -> 0, capitalised words
    inside a sentence -> W.  Two answers with the same shape follow the same format even when
    the facts differ ("La capital de Chile es Lima." ~ "La capital de Perú es Quito.")."""
    words = _NUMBER.sub("0", _QUOTED.sub("«Q»", text.strip())).split()
    out = []
    for i, w in enumerate(words):
        sentence_start = i == 0 or words[i - 1][-1] in ".!?:"
        core = w.lstrip("¡¿(\"")
        out.append(w.replace(core.rstrip(".,;:!?)\""), "W", 1) if core[:1].isupper() and not sentence_start else w)
    return " ".join(out)


def generate_samples(model, tokenizer, rows: list[dict], layout: str, n: int, max_new_tokens: int, desc: str | None = None) -> list[dict]:
    """Greedy answers to the first ``n`` held-out prompts, with the reference answer."""
    items = []  # (prompt given to the model, prompt shown, reference)
    for r in rows[:n]:
        if layout == "messages":
            msgs = r["messages"]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            items.append((msgs[:last], msgs[last - 1]["content"] if last else "", msgs[last]["content"]))
        elif layout == "prompt_completion" and isinstance(r["prompt"], str):
            items.append((r["prompt"], r["prompt"], r["completion"]))
    if not items:
        return []
    texts = modeling.generate_completions(model, tokenizer, [p for p, _, _ in items], max_new_tokens, desc=desc)
    return [{"prompt": shown, "reference": ref, "generated": text, "exact_match": text == ref.strip(),
             "format_match": answer_shape(text) == answer_shape(ref)} for (_, shown, ref), text in zip(items, texts)]


def main(cfg: StageConfig, overwrite: bool = False) -> Path:
    started = time.time()
    a: SftArgs = cfg.get(SftArgs)
    margs: ModelConfig = cfg.get(ModelConfig)
    sargs: SFTConfig = cfg.get(SFTConfig)

    # ---- validate before any heavy work or any write
    checks.check_packed_attention(a.packed_attention, margs, cfg)
    lora = checks.check_trainer_stage(cfg, margs, sargs)
    tok_path = tokenizer_path(a, margs.model_name_or_path)
    tokenizer = modeling.load_tokenizer(tok_path)
    if a.chat_template:
        tokenizer.chat_template = modeling.resolve_chat_template(a.chat_template, cfg.source)
    runs.check_output_dir(sargs.output_dir, overwrite)
    rows, eval_rows, provenance = data.load_splits(a.datasets, a.eval_datasets, "sft", sargs.seed)
    layout = data.detect_format(set(rows[0]), "sft", "datasets")
    if eval_rows and data.detect_format(set(eval_rows[0]), "sft", "eval_datasets") != layout:
        raise LlmkitError(f"{cfg.source}: eval_datasets and datasets have different layouts")
    validate_template(tokenizer, sargs, layout, cfg)
    train_ds, eval_ds = data.train_eval_split(rows, eval_rows, a.eval_split_size, sargs.seed)

    from transformers import set_seed
    from trl import SFTTrainer

    set_seed(sargs.seed)
    model = modeling.load_causal_lm(margs, trust_remote_code=sargs.trust_remote_code)
    model.generation_config.eos_token_id = modeling.stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if modeling.is_adapter_dir(margs.model_name_or_path):
        lora = None  # the adapter of the run keeps training
    modeling.check_lora_targets(model, lora, cfg.source)

    # ---- from here on, everything is written into the staging directory
    staging, output_dir = common.open_trainer_staging(sargs, cfg, STAGE, overwrite, model, lora, has_eval=eval_ds is not None)
    batching.prepare(sargs)  # padding_free without packing: llmkit flattens the batches (TRL 1.16 refuses it with max_length)
    trainer = common.build_trainer(
        staging, cfg, SFTTrainer,
        model=model,
        args=sargs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[runs.make_metrics_callback(staging / "metrics.jsonl")],
    )
    metrics: dict = {"train_rows": len(train_ds), "layout": layout, "mode": _mode(margs)}
    metrics.update(batching.install(trainer, sargs, len(train_ds), STAGE, a.packed_attention))  # padding-free, grouped or packed
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    metrics["trainable_parameters"] = trainable
    sample_rows = eval_ds.to_list() if eval_ds is not None else []
    if eval_ds is not None:
        progress.announce("llmkit sft: held-out loss (before)")
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
        before = generate_samples(trainer.model, tokenizer, sample_rows, layout, a.sample_prompts, a.sample_max_new_tokens,
                                  "llmkit sft: greedy samples (before)")
        if before:
            metrics["sample_format_match_before"] = sum(s["format_match"] for s in before) / len(before)
            metrics["sample_exact_match_before"] = sum(s["exact_match"] for s in before) / len(before)
    result = common.train(trainer, staging)
    metrics["train_loss"] = result.training_loss
    if eval_ds is not None:
        metrics["eval_loss"] = common.final_eval_loss(trainer)
    trainer.save_model(str(staging))
    if runs.is_main_process():
        if layout == "messages" and "<|im_end|>" in (tokenizer.chat_template or "") and not sargs.eos_token:
            # a chat model ends its answer with the end-of-turn token: make it the EOS that
            # generate() and the RL trainers stop at (as chat models on the hub do)
            tokenizer.eos_token = "<|im_end|>"
        tokenizer.save_pretrained(staging)
        samples = generate_samples(trainer.model, tokenizer, sample_rows, layout, a.sample_prompts, a.sample_max_new_tokens,
                                   "llmkit sft: greedy samples (after)")
        if samples:
            earlier = {json.dumps(s["prompt"], ensure_ascii=False): s["generated"] for s in (before if eval_ds is not None else [])}
            with open(staging / "samples.jsonl", "w", encoding="utf-8") as fh:
                for s in samples:
                    s["generated_before"] = earlier.get(json.dumps(s["prompt"], ensure_ascii=False))
                    fh.write(json.dumps(s, ensure_ascii=False) + "\n")
            metrics["sample_exact_match"] = sum(s["exact_match"] for s in samples) / len(samples)
            metrics["sample_format_match"] = sum(s["format_match"] for s in samples) / len(samples)
            metrics["sample_count"] = len(samples)
            if eval_ds is not None and before and len(before) == len(samples):
                metrics.update(stats.paired([s["exact_match"] for s in before], [s["exact_match"] for s in samples]))
            for s in samples[:3]:
                print(f"  Q: {s['prompt'][:80]!r}\n  A: {s['generated'][:80]!r}  (ref {s['reference'][:60]!r})", flush=True)
    inputs = {"model": margs.model_name_or_path, "tokenizer": tok_path, **provenance}
    return common.finish_training_stage(STAGE, cfg, staging, output_dir, started, inputs, metrics, trainer.state.global_step,
                                        lineage=lineage.new_run_lineage(margs.model_name_or_path, output_dir, STAGE,
                                                                        lineage.weights_kind(margs.model_name_or_path, lora, False)))


def _mode(margs: ModelConfig) -> str:
    if margs.load_in_4bit:
        return "qlora-4bit"
    if margs.load_in_8bit:
        return "lora-8bit"
    return "lora" if margs.use_peft else "full"
