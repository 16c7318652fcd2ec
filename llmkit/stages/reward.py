"""`llmkit reward --config recipes/tiny-es/reward.yaml`: train a reward model on preference pairs with
TRL's RewardTrainer.

Features (keys):
  - conversational or plain chosen/rejected pairs (optional prompt); full or LoRA (`use_peft`)
  - held-out pairwise accuracy and margin before/after (`eval_datasets`); saved as a full
    sequence-classification model (LoRA merged) that PPO and GRPO read as their reward_model_path

config -> validate (pairs have `chosen`/`rejected`, optional `prompt`, conversational or
plain; every local row checked) -> sequence-classification model (one score) on an SFT run
or any causal LM (a LoRA run is folded into its base first) -> RewardTrainer (full or LoRA)
-> pairwise accuracy and mean margin on held-out pairs, before and after -> save a *full*
AutoModelForSequenceClassification (LoRA is merged at the end) + tokenizer, so the PPO stage
and GRPO (as one more reward) load it with from_pretrained.
"""

from __future__ import annotations

import time
from pathlib import Path

from trl import ModelConfig, RewardConfig

from llmkit import data, lineage, modeling, runs, stats
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import checks, common, devices
from llmkit.stages.args import DataArgs, tokenizer_path

STAGE = "reward"
# the stage's key numbers, (label, metric before training, metric after): manifest "summary", `llmkit run`, reports
SUMMARY = (("pairwise accuracy", "pairwise_accuracy_before", "pairwise_accuracy"), ("margin", "margin_before", "margin"))
COUNT = "eval_pairs"  # how many held-out pairs the accuracy is measured on (its noise, llmkit/stats.py)
PAIRED = "pairwise_accuracy"  # the row whose pairs are also compared one by one before/after


CLASSES = [DataArgs, ModelConfig, RewardConfig]
DOC = __doc__


def defaults(explicit: dict) -> dict:
    return devices.trainer_defaults(explicit, {"eval_strategy": "steps", "eval_steps": 100, "lora_task_type": "SEQ_CLS",
                                               "learning_rate": 1e-4})


def pair_texts(tokenizer, row: dict) -> tuple[str, str]:
    """The full chosen and rejected sequences as the reward model reads them."""
    prompt = row.get("prompt")
    out = []
    for col in ("chosen", "rejected"):
        ans = row[col]
        if isinstance(ans, list):
            msgs = (prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])) + ans
            out.append(tokenizer.apply_chat_template(msgs, tokenize=False))
        else:
            out.append((prompt or "") + ans)
    return out[0], out[1]


def score(model, tokenizer, texts: list[str], batch_size: int = 16, bar=None) -> list[float]:
    import torch

    model.eval()
    scores: list[float] = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, add_special_tokens=False)
        enc = enc.to(model.device)
        with torch.no_grad():
            scores += model(**enc).logits[:, 0].float().tolist()
        if bar is not None:
            bar.update(len(texts[i : i + batch_size]))
    return scores


def pairwise(model, tokenizer, rows: list[dict], desc: str | None = None, wins: list | None = None) -> dict[str, float]:
    """Accuracy (chosen scored above rejected) and mean margin over held-out pairs (``desc``
    names the progress bar; each pair's chosen-above-rejected is appended to ``wins`` when given)."""
    from llmkit import progress

    chosen, rejected = zip(*(pair_texts(tokenizer, r) for r in rows))
    with progress.bar(2 * len(rows), desc, unit="seq") as bar:
        sc, sr = score(model, tokenizer, list(chosen), bar=bar), score(model, tokenizer, list(rejected), bar=bar)
    diffs = [c - r for c, r in zip(sc, sr)]
    won = [d > 0 for d in diffs]
    if wins is not None:
        wins.extend(won)
    return {"pairwise_accuracy": sum(won) / len(diffs), "margin": sum(diffs) / len(diffs)}


def main(cfg: StageConfig, overwrite: bool = False) -> Path:
    started = time.time()
    a: DataArgs = cfg.get(DataArgs)
    margs: ModelConfig = cfg.get(ModelConfig)
    rargs: RewardConfig = cfg.get(RewardConfig)

    lora = checks.check_trainer_stage(cfg, margs, rargs)
    if lora is not None and margs.lora_task_type != "SEQ_CLS":
        raise LlmkitError(f"{cfg.source}: a reward model's LoRA needs lora_task_type: SEQ_CLS (got {margs.lora_task_type})")
    tok_path = tokenizer_path(a, margs.model_name_or_path)
    tokenizer = modeling.load_tokenizer(tok_path)
    runs.check_output_dir(rargs.output_dir, overwrite)
    rows, eval_rows, provenance = data.load_splits(a.datasets, a.eval_datasets, "preference", rargs.seed)
    if any(isinstance(r["chosen"], list) for r in rows[:10]) and not tokenizer.chat_template:
        raise LlmkitError(f"{cfg.source}: conversational pairs need a chat template; the tokenizer has none")
    train_ds, eval_ds = data.train_eval_split(rows, eval_rows, a.eval_split_size, rargs.seed)

    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardTrainer

    set_seed(rargs.seed)
    model = modeling.load_merged(margs, rargs.trust_remote_code, AutoModelForSequenceClassification, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    modeling.check_lora_targets(model, lora, cfg.source)

    staging, output_dir = common.open_trainer_staging(rargs, cfg, STAGE, overwrite, model, lora, has_eval=eval_ds is not None,
                                                      final_full_model=True)  # LoRA is merged into the saved model
    trainer = common.build_trainer(
        staging, cfg, RewardTrainer,
        model=model,
        args=rargs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[runs.make_metrics_callback(staging / "metrics.jsonl")],
    )
    metrics: dict = {"train_pairs": len(train_ds), "mode": "lora" if lora else "full"}
    held = eval_ds.to_list() if eval_ds is not None else []
    wins_before: list[bool] = []
    wins_after: list[bool] = []
    if held:
        before = pairwise(trainer.model, tokenizer, held, "llmkit reward: held-out pairwise accuracy (before)", wins_before)
        metrics.update({f"{k}_before": v for k, v in before.items()})
    result = common.train(trainer, staging)
    metrics["train_loss"] = result.training_loss
    final = trainer.model
    if lora is not None:
        final = trainer.accelerator.unwrap_model(final).merge_and_unload()
    if held:
        metrics.update(pairwise(final, tokenizer, held, "llmkit reward: held-out pairwise accuracy (after)", wins_after))
        metrics["eval_pairs"] = len(held)
        metrics.update(stats.paired(wins_before, wins_after))
    if runs.is_main_process():
        trainer.accelerator.unwrap_model(final).save_pretrained(staging) if lora is None else final.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    inputs = {"model": margs.model_name_or_path, "tokenizer": tok_path, **provenance}
    return common.finish_training_stage(STAGE, cfg, staging, output_dir, started, inputs, metrics, trainer.state.global_step,
                                        plot_keys=("loss", "eval_loss", "accuracy", "eval_accuracy"),
                                        lineage=lineage.new_run_lineage(margs.model_name_or_path, output_dir, STAGE, "full"))
