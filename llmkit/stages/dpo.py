"""`llmkit dpo --config recipes/tiny-es/dpo.yaml`: direct preference optimisation with TRL's
DPOTrainer over an SFT run.

Features (keys):
  - any of TRL's losses (`loss_type`), `beta`; full or LoRA (`use_peft`)
  - a LoRA over a LoRA SFT run is saved as one composed adapter over the original base (the
    stage's own adapter in delta/; llmkit/lineage.py)
  - held-out preference accuracy and implicit-reward margin before/after (`eval_datasets`, at most
    `eval_limit` pairs)

config -> validate (pairs with `chosen`/`rejected`, optional `prompt`; TRL loss variant via
`loss_type`) -> policy = the SFT run (a LoRA run is folded into its base) -> reference = the
same SFT model: with `use_peft` the new adapter is simply disabled, otherwise a second frozen
copy is loaded from the SFT run (never rebuilt from `config._name_or_path`) -> DPOTrainer ->
held-out preference accuracy (policy log-prob of chosen > rejected) and implicit-reward margin,
before and after -> run directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import DPOConfig, ModelConfig

from llmkit import batching, data, lineage, modeling, runs, stats
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import checks, common, devices
from llmkit.stages.args import DataArgs, packed_attention_field, tokenizer_path

STAGE = "dpo"
# the stage's key numbers, (label, metric before training, metric after): manifest "summary", `llmkit run`, reports
SUMMARY = (("preference accuracy", "preference_accuracy_before", "preference_accuracy"),
           ("implicit-reward accuracy", None, "implicit_reward_accuracy"), ("implicit-reward margin", None, "implicit_reward_margin"))
COUNT = "eval_pairs"  # how many held-out pairs the accuracies are measured on (their noise, llmkit/stats.py)
PAIRED = "preference_accuracy"  # the row whose pairs are also compared one by one before/after


@dataclass
class DpoArgs(DataArgs):
    eval_limit: int = field(default=1000, metadata={
        "help": "At most this many held-out pairs are scored before and after (4 scored sequences each)."})
    packed_attention: str = packed_attention_field()


CLASSES = [DpoArgs, ModelConfig, DPOConfig]
DOC = __doc__


def defaults(explicit: dict) -> dict:
    return devices.trainer_defaults(explicit, {"eval_strategy": "steps", "eval_steps": 100, **batching.defaults(STAGE, explicit)})


def split_pair(tokenizer, row: dict) -> tuple[str, str, str]:
    """(prompt text, chosen completion text, rejected completion text) as the policy sees them."""
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if isinstance(chosen, list):
        msgs = prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])
        p = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = [tokenizer.apply_chat_template(msgs + c, tokenize=False) for c in (chosen, rejected)]
        return p, full[0][len(p):], full[1][len(p):]
    return prompt or "", chosen, rejected


def completion_logps(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 8, bar=None) -> list[float]:
    """Sum of log-probabilities of each completion given its prompt.

    ``batch_size`` sequences per forward pass, right-padded with an attention mask (the logits
    of the real tokens equal one-at-a-time scoring within 1e-5: tests/test_progress_logs.py);
    ``bar`` (a progress bar) advances by one per scored sequence."""
    import torch

    out = []
    model.eval()
    pairs = [(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
             for p, c in zip(prompts, completions)]
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        ids = torch.zeros((len(chunk), max(len(p) + len(c) for p, c in chunk)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, (p, c) in enumerate(chunk):
            ids[j, : len(p) + len(c)], mask[j, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long), 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        for j, (p, c) in enumerate(chunk):
            start = max(len(p), 1)  # the first token of an empty prompt has nothing to be predicted from
            row = torch.log_softmax(logits[j, start - 1 : len(p) + len(c) - 1].float(), -1)
            out.append(row.gather(-1, ids[j, start : len(p) + len(c), None]).sum().item())
        if bar is not None:
            bar.update(len(chunk))
    return out


def preference_metrics(policy, tokenizer, rows: list[dict], beta: float, ref=None, desc: str | None = None,
                       wins: list | None = None) -> dict[str, float]:
    """Preference accuracy of the policy, and DPO's implicit reward accuracy/margin against the
    reference (``ref``, or the policy with its LoRA adapter disabled when ``ref`` is None).
    ``desc`` names the progress bar (4 scored sequences per pair); each pair's chosen-above-rejected
    is appended to ``wins`` when given."""
    import contextlib

    from llmkit import progress

    p, c, r = (list(x) for x in zip(*(split_pair(tokenizer, row) for row in rows)))
    with progress.bar(4 * len(rows), desc, unit="seq") as bar:
        pc, pr = completion_logps(policy, tokenizer, p, c, bar=bar), completion_logps(policy, tokenizer, p, r, bar=bar)
        ref_model = ref if ref is not None else policy
        with policy.disable_adapter() if ref is None else contextlib.nullcontext():
            rc, rr = completion_logps(ref_model, tokenizer, p, c, bar=bar), completion_logps(ref_model, tokenizer, p, r, bar=bar)
    margins = [beta * ((a - b) - (d - e)) for a, b, d, e in zip(pc, rc, pr, rr)]
    n = len(rows)
    won = [x > y for x, y in zip(pc, pr)]
    if wins is not None:
        wins.extend(won)
    return {
        "preference_accuracy": sum(won) / n,
        "implicit_reward_accuracy": sum(m > 0 for m in margins) / n,
        "implicit_reward_margin": sum(margins) / n,
    }


def main(cfg: StageConfig, overwrite: bool = False) -> Path:
    started = time.time()
    a: DpoArgs = cfg.get(DpoArgs)
    margs: ModelConfig = cfg.get(ModelConfig)
    dargs: DPOConfig = cfg.get(DPOConfig)

    lora = checks.check_trainer_stage(cfg, margs, dargs, "policy (model_name_or_path)")
    stacked = lineage.is_stacked(margs.model_name_or_path, lora)  # a new LoRA over a LoRA run: composed at the end
    if dargs.beta <= 0:
        raise LlmkitError(f"{cfg.source}: beta must be positive, got {dargs.beta}")
    if a.eval_limit < 0:
        raise LlmkitError(f"{cfg.source}: eval_limit must be 0 (no held-out preference metrics) or more, got {a.eval_limit}")
    checks.check_packed_attention(a.packed_attention, margs, cfg)
    tok_path = tokenizer_path(a, margs.model_name_or_path)
    tokenizer = modeling.load_tokenizer(tok_path)
    runs.check_output_dir(dargs.output_dir, overwrite)
    rows, eval_rows, provenance = data.load_splits(a.datasets, a.eval_datasets, "preference", dargs.seed)
    train_ds, eval_ds = data.train_eval_split(rows, eval_rows, a.eval_split_size, dargs.seed)

    from transformers import set_seed
    from trl import DPOTrainer

    set_seed(dargs.seed)
    policy = modeling.load_merged(margs, dargs.trust_remote_code)
    modeling.check_lora_targets(policy, lora, cfg.source)
    ref = None if lora is not None else modeling.load_merged(margs, dargs.trust_remote_code).eval().requires_grad_(False)

    staging, output_dir = common.open_trainer_staging(dargs, cfg, STAGE, overwrite, policy, lora, has_eval=eval_ds is not None)
    batching.prepare(dargs)  # padding_free: llmkit runs it (TRL 1.16 turns DPO's padding_free off)
    trainer = common.build_trainer(
        staging, cfg, DPOTrainer,
        model=policy,
        ref_model=ref,
        args=dargs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[runs.make_metrics_callback(staging / "metrics.jsonl")],
    )
    metrics: dict = {"train_pairs": len(train_ds), "mode": "lora" if lora else "full", "loss_type": dargs.loss_type}
    metrics.update(batching.install(trainer, dargs, stage=STAGE, packed_attention=a.packed_attention))  # padding-free or grouped
    held = eval_ds.to_list()[: a.eval_limit] if eval_ds is not None else []

    wins_before: list[bool] = []
    wins_after: list[bool] = []
    if held:
        before = preference_metrics(trainer.model, tokenizer, held, dargs.beta, ref=trainer.model,
                                    desc="llmkit dpo: held-out preference metrics (before)", wins=wins_before)
        metrics["preference_accuracy_before"] = before["preference_accuracy"]
    result = common.train(trainer, staging)
    metrics["train_loss"] = result.training_loss
    if held:
        metrics.update(preference_metrics(trainer.accelerator.unwrap_model(trainer.model), tokenizer, held, dargs.beta, ref=ref,
                                          desc="llmkit dpo: held-out preference metrics (after)", wins=wins_after))
        metrics["eval_pairs"] = len(held)
        metrics.update(stats.paired(wins_before, wins_after))
    trainer.save_model(str(staging))
    if runs.is_main_process():
        tokenizer.save_pretrained(staging)
        if stacked:
            lineage.stack_saved_adapter(staging, margs.model_name_or_path, output_dir)
    inputs = {"policy": margs.model_name_or_path, "reference": margs.model_name_or_path, "tokenizer": tok_path,
              **provenance}
    return common.finish_training_stage(STAGE, cfg, staging, output_dir, started, inputs, metrics, trainer.state.global_step,
                                        plot_keys=("loss", "eval_loss", "rewards/margins", "rewards/accuracies"),
                                        lineage=lineage.new_run_lineage(margs.model_name_or_path, output_dir, STAGE,
                                                                        lineage.weights_kind(margs.model_name_or_path, lora, True)))
