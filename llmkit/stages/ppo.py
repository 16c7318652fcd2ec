"""`llmkit ppo --config recipes/tiny-es/ppo.yaml`: classic RLHF with PPO (llmkit's own trainer over
transformers, PEFT, accelerate).

Features (keys):
  - reward model (`reward_model_path`) and/or reward functions (`reward_funcs`, `reward_weights`)
  - GAE (`gamma`, `lam`), clipped policy and value losses (`cliprange`, `cliprange_value`, `vf_coef`)
  - KL penalty k1/k3 (`kl_estimator`, `kl_coef`), adaptive KL (`adaptive_kl`, `kl_target`), whitening
  - full or LoRA (`use_peft`; a LoRA run's adapter keeps training); `accelerate launch`; resume

config -> validate (prompts: a 'prompt' column, text or chat, the other columns reach the reward
functions; reward model / reward functions, tokenizers, batch sizes, PPO values) -> policy,
reference, reward and value models -> for each step: sample completions, score them, per-token
KL penalty, GAE, then `num_ppo_epochs` of clipped PPO updates over `num_mini_batches` -> greedy
eval reward on held-out prompts before and after -> run directory (policy or adapter +
tokenizer, value_model/, metrics.jsonl, loss.png, samples.jsonl).

Models, losses, metrics and batches: llmkit/stages/ppo_trainer.py (its docstring follows in --help).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig

from llmkit import data, lineage, modeling, runs, stats
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import checks, common, devices, disk, ppo_trainer
from llmkit.stages.args import DataArgs, tokenizer_path
from llmkit.stages.ppo_trainer import PPOConfig, PPOTrainer, load_models

STAGE = "ppo"
# the stage's key numbers, (label, metric before training, metric after): manifest "summary", `llmkit run`, reports
SUMMARY = (("eval reward", "eval_reward_before", "eval_reward"), ("KL to the initial policy (nats)", None, "final_kl"))
COUNT = "eval_prompts"  # how many held-out prompts the eval reward is the mean of
PAIRED = "eval_reward"  # the row whose prompts are also compared one by one before/after (sign test)


@dataclass
class PpoArgs(DataArgs):
    max_eval_prompts: int = field(default=64, metadata={
        "help": "Score at most this many held-out prompts (greedy) before and after training."})
    sample_prompts: int = field(default=8, metadata={"help": "Held-out completions before/after written to samples.jsonl."})
    reward_model_path: str | None = field(default=None, metadata={
        "help": "A reward run: sequence-classification model with num_labels=1 and its tokenizer."})
    reward_funcs: list = field(default_factory=list, metadata={
        "help": "Reward functions from llmkit.rewards (math_accuracy, format, spanish, length), alone or with the reward model."})
    reward_weights: list | None = field(default=None, metadata={
        "help": "One weight per reward source: the reward model first, then reward_funcs in order. Default: all 1."})
    reward_retokenize: bool = field(default=False, metadata={
        "help": "Decode and re-tokenize for a reward model whose tokenizer differs from the policy's."})
    value_model_path: str | None = field(default=None, metadata={
        "help": "Initial value model (num_labels=1, the policy's tokenizer). Default: the reward model, else the policy with a new "
                "score head."})


CLASSES = [PpoArgs, ModelConfig, PPOConfig]
DOC = __doc__ + "\n" + (ppo_trainer.__doc__ or "")


def defaults(explicit: dict) -> dict:
    return devices.trainer_defaults(explicit, {"learning_rate": 3e-6, "logging_steps": 1, "save_steps": 50})


# --------------------------------------------------------------------------- validation


def check_values(a: PpoArgs, p: PPOConfig, src: str) -> None:
    rules = [
        (p.kl_coef >= 0, f"kl_coef must be >= 0, got {p.kl_coef}"),
        (p.kl_estimator in ("k1", "k3"), f"kl_estimator must be 'k1' or 'k3', got {p.kl_estimator!r}"),
        (p.kl_target > 0 and p.kl_horizon > 0, "kl_target and kl_horizon must be positive"),
        (p.cliprange > 0, f"cliprange must be > 0, got {p.cliprange}"),
        (p.cliprange_value > 0, f"cliprange_value must be > 0, got {p.cliprange_value}"),
        (p.vf_coef >= 0, f"vf_coef must be >= 0, got {p.vf_coef}"),
        (0 <= p.gamma <= 1, f"gamma must be in [0, 1], got {p.gamma}"),
        (0 <= p.lam <= 1, f"lam must be in [0, 1], got {p.lam}"),
        (p.response_length >= 1, f"response_length must be at least 1, got {p.response_length}"),
        (p.temperature > 0, f"temperature must be > 0, got {p.temperature}"),
        (p.stop_token in ("eos", None), f"stop_token must be 'eos' or null, got {p.stop_token!r}"),
        (p.missing_eos_penalty is None or p.missing_eos_penalty >= 0, "missing_eos_penalty must be >= 0"),
        (p.total_episodes is None or p.total_episodes > 0, "total_episodes must be positive"),
        (p.num_ppo_epochs >= 1, f"num_ppo_epochs must be at least 1, got {p.num_ppo_epochs}"),
        (p.num_mini_batches >= 1, f"num_mini_batches must be at least 1, got {p.num_mini_batches}"),
        (p.local_rollout_forward_batch_size >= 1, "local_rollout_forward_batch_size must be at least 1"),
        (p.save_steps > 0 and p.logging_steps > 0, "save_steps and logging_steps must be positive"),
        (a.max_eval_prompts >= 0 and a.sample_prompts >= 0, "max_eval_prompts and sample_prompts must be >= 0"),
    ]
    for ok, message in rules:
        if not ok:
            raise LlmkitError(f"{src}: {message}")
    if p.load_best_model_at_end:
        raise LlmkitError(f"{src}: load_best_model_at_end is not supported by the ppo stage")
    b, n, g = p.per_device_train_batch_size, p.num_mini_batches, p.gradient_accumulation_steps
    if b % n:
        raise LlmkitError(f"{src}: num_mini_batches={n} does not divide the rollout batch per_device_train_batch_size={b}")
    if (b // n) % g:
        raise LlmkitError(f"{src}: gradient_accumulation_steps={g} does not divide the mini-batch of {b // n} rollouts "
                          f"(per_device_train_batch_size / num_mini_batches)")


def check_scalar_model(path: str, key: str, tokenizer, retokenize: bool):
    """A one-score sequence-classification model whose tokenizer matches the policy's (unless
    retokenizing).  Returns (its tokenizer, same vocabulary as the policy)."""
    from transformers import AutoConfig

    modeling.check_model_source(path, key)
    cfg_path = modeling.adapter_base(path) if modeling.is_adapter_dir(path) else path
    try:
        config = AutoConfig.from_pretrained(cfg_path)
    except (OSError, ValueError) as exc:
        raise LlmkitError(f"{key}: cannot read the model config of {path}: {str(exc).strip().splitlines()[0]}") from None
    if config.num_labels != 1 or not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise LlmkitError(f"{key} {path} is not a reward model: expected a sequence-classification model with num_labels=1 "
                          f"(a reward run), found {config.architectures} with num_labels={config.num_labels}")
    has_tok = Path(path).is_dir() and any((Path(path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tok = modeling.load_tokenizer(path, f"{key} tokenizer") if has_tok else tokenizer
    same = tok.get_vocab() == tokenizer.get_vocab()
    differs = f"{key} {path} has a different tokenizer than the policy ({len(tok)} vs {len(tokenizer)} tokens)"
    if not same and key == "value_model_path":
        raise LlmkitError(f"{differs}: the value model reads the policy's tokens, so it needs the policy's tokenizer")
    if not same and not retokenize:
        raise LlmkitError(f"{differs}: set reward_retokenize: true to score decoded text with its own tokenizer")
    return tok, same


def check_rewards(a: PpoArgs, tokenizer, src: str):
    """The reward sources: (reward functions as (name, function), their weights, the reward
    model's own tokenizer or None when it reads the policy's tokens, whether the value model
    starts from the reward model)."""
    from llmkit import rewards

    if not a.reward_model_path and not a.reward_funcs:
        raise LlmkitError(f"{src}: PPO needs reward_model_path or reward_funcs (names from llmkit.rewards)")
    funcs = list(zip(a.reward_funcs, rewards.get_reward_functions(a.reward_funcs))) if a.reward_funcs else []
    n_sources = bool(a.reward_model_path) + len(funcs)
    weights = [1.0] * n_sources if a.reward_weights is None else a.reward_weights
    if len(weights) != n_sources or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise LlmkitError(f"{src}: reward_weights needs one number per reward source ({n_sources}: the reward model first, "
                          f"then reward_funcs in order), got {weights!r}")
    reward_tok, value_from_reward = None, False
    if a.reward_model_path:
        rtok, value_from_reward = check_scalar_model(a.reward_model_path, "reward_model_path", tokenizer, a.reward_retokenize)
        reward_tok = None if value_from_reward else rtok
    if a.value_model_path:
        check_scalar_model(a.value_model_path, "value_model_path", tokenizer, False)
    return funcs, weights, reward_tok, value_from_reward


def _check_length(path: str, prompt: int, response: int, src: str) -> None:
    """Longest prompt + response_length must fit the policy's context."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(modeling.adapter_base(path) if modeling.is_adapter_dir(path) else path)
    except (OSError, ValueError):
        return  # a hub model not available offline: loading it will say so
    limit = getattr(config, "max_position_embeddings", None)
    if limit and prompt + response > limit:
        raise LlmkitError(f"{src}: the longest prompt ({prompt} tokens) plus response_length {response} is more than "
                          f"the model's {limit} positions")


def main(cfg: StageConfig, overwrite: bool = False) -> Path:
    started = time.time()
    a: PpoArgs = cfg.get(PpoArgs)
    margs: ModelConfig = cfg.get(ModelConfig)
    p: PPOConfig = cfg.get(PPOConfig)
    src, path = cfg.source, margs.model_name_or_path

    # ---- validate before any heavy work or any write
    checks.check_training_args(p, cfg)
    check_values(a, p, src)
    modeling.check_model_args(margs, src)
    modeling.check_model_source(path)
    if margs.load_in_4bit or margs.load_in_8bit:
        raise LlmkitError(f"{src}: the ppo stage does not train in 4/8 bit; drop load_in_4bit/load_in_8bit")
    lora = modeling.peft_config(margs)
    tok_path = tokenizer_path(a, path)
    tokenizer = modeling.load_tokenizer(tok_path)
    funcs, weights, reward_tok, value_from_reward = check_rewards(a, tokenizer, src)
    runs.check_output_dir(p.output_dir, overwrite)
    rows, provenance = data.load_rows(a.datasets, "prompt", p.seed)
    eval_rows, eval_prov = data.load_rows(a.eval_datasets, "prompt", p.seed, "eval_datasets") if a.eval_datasets else ([], [])
    if any(isinstance(r["prompt"], list) for r in rows + eval_rows) and not tokenizer.chat_template:
        raise LlmkitError(f"{src}: chat prompts need a chat template; the tokenizer {tok_path} has none")
    train, held = data.split_rows(rows, eval_rows, a.eval_split_size, p.seed)
    held = held[: a.max_eval_prompts]
    if not train:
        raise LlmkitError(f"{src}: no training prompts left after holding out eval_split_size={a.eval_split_size}")
    empty = [{"role": "assistant", "content": ""}] if isinstance(train[0]["prompt"], list) else ""
    checks.probe_rewards([fn for _, fn in funcs], train[0], empty, [])
    trainer = PPOTrainer(p, tokenizer, train, held, a.sample_prompts)  # accelerate; the prompts tokenized
    _check_length(path, trainer.longest_prompt, p.response_length, src)

    # ---- models: policy, reference, reward, value
    from transformers import set_seed

    set_seed(p.seed)
    models = load_models(a, margs, lora, value_from_reward, p.trust_remote_code)
    policy, ref, reward, value, mode = models
    trainer.setup(models, reward_tok, funcs, weights)

    # ---- from here on, everything is written into the staging directory
    policy_bytes, policy_trainable, _ = disk.model_footprint(policy)
    value_bytes, value_trainable, _ = disk.model_footprint(value)  # checkpoints and the run hold value_model/ too
    disk.check_disk_space(p, cfg, runs.staging_path(p.output_dir), policy_bytes + value_bytes, policy_trainable + value_trainable,
                          policy_bytes + value_bytes)
    staging = runs.open_staging(p.output_dir, cfg, STAGE, overwrite)
    output_dir = p.output_dir
    metrics: dict = {"mode": mode, "reference": "adapter disabled" if ref is None else "frozen copy of the initial policy",
                     "trainable_parameters": trainer.trainable, "train_prompts": len(train), "eval_prompts": len(held),
                     "reward_sources": trainer.sources}
    last = trainer.train(staging)
    samples_after: list = []
    if held:
        metrics["eval_reward_before"] = trainer.state["eval_reward_before"]
        metrics["eval_reward"], samples_after = trainer.held_out_reward("llmkit ppo: held-out reward (after)")
        if len(trainer.state.get("eval_scores_before") or []) == len(trainer.last_scores):  # the same prompts, one by one
            metrics.update(stats.paired_scores(trainer.state["eval_scores_before"], trainer.last_scores))
    if last:
        metrics["final_kl"] = last["objective/kl"]
        metrics["final_reward"] = last["reward/mean"]
    if samples_after and runs.is_main_process():
        write_samples(staging / "samples.jsonl", trainer.samples_before, samples_after)
    trainer.save(staging)
    inputs = {"model": path, "tokenizer": tok_path, "reward_model": a.reward_model_path, "reward_funcs": a.reward_funcs,
              "value_model": a.value_model_path or (a.reward_model_path if value_from_reward else "policy + new score head"),
              "datasets": provenance, "eval_datasets": eval_prov}
    metrics["episodes"] = trainer.steps * trainer.global_batch
    return common.finish_training_stage(STAGE, cfg, staging, output_dir, started, inputs, metrics, trainer.steps,
                                        plot_keys=("reward/mean", "objective/kl"),
                                        lineage=lineage.new_run_lineage(path, output_dir, STAGE, mode))


def write_samples(file: Path, before: list[dict], after: list[dict]) -> None:
    """The held-out completions after training next to the same prompts' completions before."""
    earlier = {json.dumps(s["prompt"], ensure_ascii=False): s for s in before}
    with open(file, "w", encoding="utf-8") as fh:
        for s in after:
            b = earlier.get(json.dumps(s["prompt"], ensure_ascii=False), {})
            fh.write(json.dumps({"prompt": s["prompt"], "before": b.get("completion"), "reward_before": b.get("reward"),
                                 "after": s["completion"], "reward_after": s["reward"]}, ensure_ascii=False) + "\n")
