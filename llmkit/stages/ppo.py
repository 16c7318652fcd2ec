"""`llmkit ppo --config recipes/tiny-es/ppo.yaml`: classic RLHF with PPO (llmkit's own trainer over
transformers, PEFT, accelerate).

Features (keys):
  - reward model (`reward_model_path`) and/or reward functions (`reward_funcs`, `reward_weights`)
  - GAE (`gamma`, `lam`), clipped policy and value losses (`cliprange`, `cliprange_value`, `vf_coef`)
  - KL penalty k1/k3 (`kl_estimator`, `kl_coef`), adaptive KL (`adaptive_kl`, `kl_target`), whitening
  - full or LoRA (`use_peft`; a LoRA run's adapter keeps training); `accelerate launch`; resume

config -> validate (prompts, reward model / reward functions, tokenizers, batch sizes, PPO
values) -> policy, reference, reward and value models -> for each step: sample completions,
score them, per-token KL penalty, GAE, then `num_ppo_epochs` of clipped PPO updates over
`num_mini_batches` -> greedy eval reward on held-out prompts before and after -> run directory
(policy or adapter + tokenizer, value_model/, metrics.jsonl, loss.png, samples.jsonl).

Models
* policy: `model_name_or_path` — a full model (trained in full, or with a fresh LoRA when
  `use_peft`), or a LoRA run directory (base + adapter: that adapter keeps training).
* reference (frozen, = the policy before PPO): a full policy is deep-copied; a fresh LoRA uses
  the same network with the adapter switched off (LoRA starts as a no-op, so that *is* the
  initial policy, at no memory cost); a LoRA run is loaded a second time with its adapter
  merged into the base (switching that adapter off would compare against the pre-SFT base).
* reward (frozen): `reward_model_path`, a sequence-classification model with one score (a
  `reward` run); the score of the last response token.  And/or `reward_funcs` from
  llmkit.rewards (GRPO signature, dataset columns as keyword lists).  Sources are summed with
  `reward_weights` (reward model first, then the functions in order).
* value (trained): the score head of a sequence-classification model applied to the hidden
  state of every position.  From `value_model_path`, else a copy of the reward model, else
  (reward functions only, or a reward model with another tokenizer) the policy's own
  backbone with a new score head set to 0.  It is trained in full, also with a LoRA policy.

Losses (per token, averaged over the response tokens of a micro-batch; see ppo_core.py)
  kl_t     = logp_t - ref_t (k1) or exp(ref_t - logp_t) - 1 - (ref_t - logp_t) (k3)
  r_t      = -kl_coef * kl_t, plus the sequence score (- missing_eos_penalty when the
             response has no stop token) on the last token; rescaled if whiten_rewards
  A, R     = GAE(gamma, lam) on r and the rollout values; A whitened over the batch
  policy   = mean(max(-A * ratio, -A * clip(ratio, 1 - cliprange, 1 + cliprange)))
  value    = 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, ±cliprange_value) - R)^2))
  loss     = policy + vf_coef * value;   one AdamW over the policy's and the value's weights
  adaptive_kl: after each step kl_coef *= 1 + clip(KL / kl_target - 1, ±0.2) * episodes / kl_horizon
Logits are divided by `temperature` everywhere (sampling, old, reference and new log-probs).
Dropout is off in every model: PPO's ratio needs the network of the rollout.

Metrics (metrics.jsonl and stdout, averaged over processes): reward/mean (the score before
the KL penalty: weighted sources, minus missing_eos_penalty) and reward/<source>,
objective/kl (KL estimate summed over a response), objective/entropy (-logp of the sampled
tokens, summed), objective/non_score_reward (-kl_coef x KL), objective/rlhf_reward,
loss/policy_avg, loss/value_avg, policy/approxkl_avg, policy/clipfrac_avg, val/clipfrac_avg,
response/length, response/stop_frac, kl_coef, lr, tokens_per_s; loss.png plots reward and KL.

Batches (per process): each step rolls out `per_device_train_batch_size` prompts, split into
`num_mini_batches` mini-batches (one optimizer step each), each processed in
`gradient_accumulation_steps` micro-batches; `num_ppo_epochs` passes.  Steps: `max_steps`,
else `total_episodes` / (batch x processes), else `num_train_epochs` over the prompts.  Under
`accelerate launch` each process rolls out its own prompts, gradients are all-reduced,
metrics averaged, and only the main process writes.  A checkpoint every `save_steps` goes to
`checkpoints/checkpoint-N` (weights, optimizer, scheduler, KL coefficient, RNG); a re-run of
the same config resumes from the newest and ends where an uninterrupted run ends.  SIGTERM or
SIGINT: the current step finishes, a checkpoint is saved, exit status 143.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments
from trl import ModelConfig

from llmkit import data, lineage, modeling, runs
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import common
from llmkit.stages import ppo_core as core

STAGE = "ppo"
# the stage's key numbers, (label, metric before training, metric after): manifest "summary", `llmkit run`, reports
SUMMARY = (("eval reward", "eval_reward_before", "eval_reward"), ("KL to the initial policy (nats)", None, "final_kl"))


@dataclass
class PpoArgs:
    datasets: list = field(default_factory=list, metadata={"help": "Prompts: a 'prompt' column (text or chat messages); other columns reach the reward functions."})
    eval_datasets: list = field(default_factory=list, metadata={"help": "Held-out prompts; if empty, eval_split_size of the prompts is held out."})
    eval_split_size: float = field(default=0.05, metadata={"help": "Fraction (<1) or count (>=1) held out when eval_datasets is empty; 0 for no eval."})
    max_eval_prompts: int = field(default=64, metadata={"help": "Score at most this many held-out prompts (greedy) before and after training."})
    sample_prompts: int = field(default=8, metadata={"help": "Held-out completions before/after written to samples.jsonl."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Tokenizer; default: the policy's (or the adapter run's)."})
    reward_model_path: str | None = field(default=None, metadata={"help": "A reward run: sequence-classification model with num_labels=1 and its tokenizer."})
    reward_funcs: list = field(default_factory=list, metadata={"help": "Reward functions from llmkit.rewards (math_accuracy, format, spanish, length), alone or with the reward model."})
    reward_weights: list | None = field(default=None, metadata={"help": "One weight per reward source: the reward model first, then reward_funcs in order. Default: all 1."})
    reward_retokenize: bool = field(default=False, metadata={"help": "Decode and re-tokenize for a reward model whose tokenizer differs from the policy's."})
    value_model_path: str | None = field(default=None, metadata={"help": "Initial value model (num_labels=1, the policy's tokenizer). Default: the reward model, else the policy with a new score head."})


@dataclass
class PPOConfig(TrainingArguments):
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes of PPO updates over each batch of rollouts."})
    num_mini_batches: int = field(default=1, metadata={"help": "Mini-batches (optimizer steps) per pass; must divide per_device_train_batch_size."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Rescale the per-token rewards to unit std (mean kept) before GAE."})
    kl_coef: float = field(default=0.05, metadata={"help": "Weight of the per-token KL penalty to the reference (initial value with adaptive_kl)."})
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimator: k1 (logp - ref) or k3 (non-negative, lower variance)."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards kl_target (Ziegler et al. 2019)."})
    kl_target: float = field(default=6.0, metadata={"help": "Target KL (nats per response) of the adaptive controller."})
    kl_horizon: float = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive controller."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO ratio clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    response_length: int = field(default=53, metadata={"help": "Maximum new tokens per completion."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (also applied to every log-probability)."})
    stop_token: str | None = field(default="eos", metadata={"help": "'eos': responses end at EOS or the chat end-of-turn token (<|im_end|>); null: never cut."})
    missing_eos_penalty: float | None = field(default=None, metadata={"help": "Subtracted from the score of responses without a stop token."})
    total_episodes: int | None = field(default=None, metadata={"help": "Completions to train on (all processes); used when max_steps is not set."})
    local_rollout_forward_batch_size: int = field(default=64, metadata={"help": "Chunk size of generation and no-grad forward passes during rollouts."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub (as in TRL's configs)."})


CLASSES = [PpoArgs, ModelConfig, PPOConfig]
DOC = __doc__


def defaults(explicit: dict) -> dict:
    return common.trainer_defaults(explicit, {"learning_rate": 3e-6, "logging_steps": 1, "save_steps": 50})


# --------------------------------------------------------------------------- validation


def check_values(a: PpoArgs, p: PPOConfig, src: str) -> None:
    checks = [
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
    for ok, message in checks:
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


def encode_prompt(tokenizer, prompt) -> list[int]:
    return tokenizer(modeling.prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- models


def score_head(model):
    head = getattr(model, "score", None)
    if head is None:
        raise LlmkitError(f"{type(model).__name__} has no 'score' head: use a decoder sequence-classification model")
    return head


def scalar_per_token(model, input_ids, attention_mask, pos):
    """The score head of a sequence-classification model at every position: (batch, length)."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False).last_hidden_state
    return score_head(model)(hidden).squeeze(-1).float()


def sequence_scores(model, ids, am, chunk: int):
    """The score head at the last attended token of each sequence (any padding side)."""
    import torch

    last = am.shape[1] - 1 - am.long().flip(1).argmax(1)
    out = []
    for s in range(0, len(ids), chunk):
        with torch.no_grad():
            v = scalar_per_token(model, ids[s:s + chunk], am[s:s + chunk], core.position_ids(am[s:s + chunk]))
        out.append(v.gather(1, last[s:s + chunk].unsqueeze(1)).squeeze(1))
    return torch.cat(out)


def make_policy_and_value(policy, value):
    import torch

    class PolicyAndValue(torch.nn.Module):
        """One module, so that one DDP forward gives both heads and all gradients are reduced."""

        def __init__(self):
            super().__init__()
            self.policy, self.value = policy, value

        def forward(self, input_ids, attention_mask, pos):
            logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False).logits
            return logits, scalar_per_token(self.value, input_ids, attention_mask, pos)

    return PolicyAndValue()


def load_models(a: PpoArgs, margs: ModelConfig, lora, value_from_reward: bool, trust_remote_code: bool):
    """(policy, reference or None for 'adapter off', reward model or None, value model, mode)."""
    from transformers import AutoModelForSequenceClassification

    scalar = AutoModelForSequenceClassification
    path = margs.model_name_or_path
    if modeling.is_adapter_dir(path):
        policy, mode = modeling.load_causal_lm(margs, trust_remote_code, trainable_adapter=True), "lora (continued)"
        ref = modeling.load_merged(margs, trust_remote_code)
    else:
        policy = modeling.load_causal_lm(margs, trust_remote_code)
        ref, mode = (None, "lora") if lora is not None else (copy.deepcopy(policy), "full")
    reward = None
    if a.reward_model_path:
        reward = modeling.load_merged(dataclasses.replace(margs, model_name_or_path=a.reward_model_path), trust_remote_code, scalar)
    if a.value_model_path or value_from_reward:
        vpath = a.value_model_path or a.reward_model_path
        value = modeling.load_merged(dataclasses.replace(margs, model_name_or_path=vpath), trust_remote_code, scalar)
    else:
        value = modeling.load_merged(margs, trust_remote_code, scalar, num_labels=1)
        score_head(value).weight.data.zero_()
    if lora is not None and not modeling.is_adapter_dir(path):
        from peft import get_peft_model

        modeling.check_lora_targets(policy, lora, "ppo")
        policy = get_peft_model(policy, lora)
    for m in (ref, reward):
        if m is not None:
            m.requires_grad_(False).eval()
    value.requires_grad_(True)
    score_head(value)  # fail here, not mid-training, for a model without a score head
    return policy.eval(), ref, reward, value.eval(), mode


# --------------------------------------------------------------------------- the run


class Run:
    """Models, data and settings of one PPO run: rollouts, scoring, updates, checkpoints."""

    def __init__(self, acc, model, opt, sched, ref, reward, reward_tok, funcs, weights, tokenizer, p: PPOConfig):
        self.acc, self.model, self.opt, self.sched = acc, model, opt, sched
        self.ref, self.reward, self.reward_tok, self.funcs, self.weights = ref, reward, reward_tok, funcs, weights
        self.tok, self.p = tokenizer, p
        self.stop = modeling.stop_token_ids(tokenizer) if p.stop_token == "eos" else []
        self.kl = core.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)

    @property
    def net(self):
        return self.acc.unwrap_model(self.model)

    def ref_logits(self, ids, am, pos):
        if self.ref is not None:
            return self.ref(input_ids=ids, attention_mask=am, position_ids=pos, use_cache=False).logits
        with self.net.policy.disable_adapter():
            return self.net.policy(input_ids=ids, attention_mask=am, position_ids=pos, use_cache=False).logits

    def generate(self, prompt_ids: list[list[int]], greedy: bool):
        """Left-padded queries, responses cut after the stop token, and their masks."""
        import torch
        from transformers import GenerationConfig

        pad, dev, n_new = self.tok.pad_token_id, self.acc.device, self.p.response_length
        lq = max(len(x) for x in prompt_ids)
        q = torch.full((len(prompt_ids), lq), pad, dtype=torch.long)
        qm = torch.zeros_like(q)
        for i, x in enumerate(prompt_ids):
            q[i, lq - len(x):], qm[i, lq - len(x):] = torch.tensor(x), 1
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": self.p.temperature, "top_k": 0, "top_p": 1.0}
        gc = GenerationConfig(max_new_tokens=n_new, eos_token_id=self.stop or None, pad_token_id=pad, **sampling)
        out = []
        c = self.p.local_rollout_forward_batch_size
        for s in range(0, len(q), c):
            with torch.no_grad(), self.acc.autocast():
                gen = self.net.policy.generate(input_ids=q[s:s + c].to(dev), attention_mask=qm[s:s + c].to(dev), generation_config=gc)
            r = gen[:, lq:]
            out.append(torch.nn.functional.pad(r, (0, n_new - r.shape[1]), value=pad))
        resp, rmask, has_stop = core.truncate_after_stop(torch.cat(out), self.stop, pad)
        return q.to(dev), qm.to(dev), resp, rmask, has_stop

    def score(self, rows: list[dict], q, qm, resp, rmask, has_stop):
        """Weighted sum of the reward sources per response, and each source's values."""
        import torch

        parts: dict[str, torch.Tensor] = {}
        ids, am = torch.cat([q, resp], 1), torch.cat([qm, rmask], 1)
        texts = [self.tok.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(resp, rmask)]
        if self.reward is not None:
            parts["model"] = self.reward_model_scores(rows, texts, ids, am)
        if self.funcs:
            chat = [isinstance(r["prompt"], list) for r in rows]
            completions = [[{"role": "assistant", "content": t}] if c else t for t, c in zip(texts, chat)]
            extra = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
            cids = [r[m.bool()].tolist() for r, m in zip(resp, rmask)]
            for name, fn in self.funcs:
                vals = fn(prompts=[r["prompt"] for r in rows], completions=completions, completion_ids=cids, **extra)
                parts[name] = torch.tensor([math.nan if v is None else float(v) for v in vals], device=resp.device)
        total = sum(w * torch.nan_to_num(v, nan=0.0) for w, v in zip(self.weights, parts.values()))
        if self.p.missing_eos_penalty and self.stop:
            total = total - self.p.missing_eos_penalty * (~has_stop).float()
        return total, parts

    def reward_model_scores(self, rows, texts, ids, am):
        import torch

        c = self.p.local_rollout_forward_batch_size
        if self.reward_tok is None:  # same tokenizer: score the policy's tokens directly
            with self.acc.autocast():
                return sequence_scores(self.reward, ids, am, c)
        rt = self.reward_tok
        full = []
        for r, t in zip(rows, texts):
            pr = r["prompt"]
            if isinstance(pr, list) and rt.chat_template:
                full.append(rt.apply_chat_template(pr + [{"role": "assistant", "content": t}], tokenize=False))
            else:
                full.append((modeling.prompt_text(self.tok, pr) if isinstance(pr, list) else pr) + t)
        scores = []
        for s in range(0, len(full), c):
            enc = rt(full[s:s + c], return_tensors="pt", padding=True, truncation=True, add_special_tokens=False).to(self.acc.device)
            with self.acc.autocast():
                scores.append(sequence_scores(self.reward, enc["input_ids"], enc["attention_mask"], c))
        return torch.cat(scores)

    def rollout(self, rows, prompt_ids):
        """Sample, then the no-grad forward passes: old log-probs, reference log-probs, values."""
        import torch

        q, qm, resp, rmask, has_stop = self.generate(prompt_ids, greedy=False)
        ids, am = torch.cat([q, resp], 1), torch.cat([qm, rmask], 1)
        pos, lq, c = core.position_ids(am), q.shape[1], self.p.local_rollout_forward_batch_size
        logp, ref_logp, values = [], [], []
        for s in range(0, len(ids), c):
            sl = slice(s, s + c)
            with torch.no_grad(), self.acc.autocast():
                logits, v = self.net(ids[sl], am[sl], pos[sl])
                logp.append(core.logprobs_of(logits[:, lq - 1:-1], resp[sl], self.p.temperature)[0])
                ref_logp.append(core.logprobs_of(self.ref_logits(ids[sl], am[sl], pos[sl])[:, lq - 1:-1], resp[sl], self.p.temperature)[0])
                values.append(v[:, lq - 1:-1])
        scores, parts = self.score(rows, q, qm, resp, rmask, has_stop)
        return dict(ids=ids, am=am, pos=pos, lq=lq, resp=resp, rmask=rmask, has_stop=has_stop, scores=scores, parts=parts,
                    logp=torch.cat(logp), ref_logp=torch.cat(ref_logp), values=torch.cat(values))

    def update(self, ro) -> dict[str, float]:
        """Rewards, advantages and the PPO epochs over one batch of rollouts; local statistics."""
        import torch

        p, m = self.p, ro["rmask"]
        kl = core.kl_per_token(ro["logp"], ro["ref_logp"], p.kl_estimator) * m
        rewards, non_score = core.token_rewards(kl, ro["scores"], m, self.kl.value)
        if p.whiten_rewards:
            rewards = core.masked_whiten(rewards, m, shift_mean=False)
        adv, returns = core.gae(rewards, ro["values"], m, p.gamma, p.lam)
        adv = core.masked_whiten(adv, m)
        b, lq = len(m), ro["lq"]
        mini = b // p.num_mini_batches
        micro = mini // p.gradient_accumulation_steps
        hist: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "pgclip", "vfclip", "approxkl", "entropy")}
        for _ in range(p.num_ppo_epochs):
            perm = torch.randperm(b, device=m.device)
            for s in range(0, b, micro):
                i = perm[s:s + micro]
                with self.acc.accumulate(self.model):
                    logits, v = self.model(ro["ids"][i], ro["am"][i], ro["pos"][i])
                    logp, ent = core.logprobs_of(logits[:, lq - 1:-1], ro["resp"][i], p.temperature)
                    pg, pgclip, approxkl = core.policy_loss(logp, ro["logp"][i], adv[i], m[i], p.cliprange)
                    vf, vfclip = core.value_loss(v[:, lq - 1:-1], ro["values"][i], returns[i], m[i], p.cliprange_value)
                    self.acc.backward(pg + p.vf_coef * vf)
                    if self.acc.sync_gradients and p.max_grad_norm:
                        self.acc.clip_grad_norm_(self.model.parameters(), p.max_grad_norm)
                    self.opt.step()
                    self.opt.zero_grad()
                if self.acc.sync_gradients:
                    self.sched.step()
                for k, x in zip(hist, (pg, vf, pgclip, vfclip, approxkl, core.masked_mean(ent, m[i]))):
                    hist[k].append(x.item())
        avg = {k: sum(v) / len(v) for k, v in hist.items()}
        stats = {
            "reward/mean": ro["scores"].mean().item(),
            "objective/kl": kl.sum(1).mean().item(),
            "objective/entropy": (-ro["logp"] * m).sum(1).mean().item(),
            "objective/non_score_reward": non_score.sum(1).mean().item(),
            "objective/rlhf_reward": (ro["scores"] + non_score.sum(1)).mean().item(),
            "loss/policy_avg": avg["pg"], "loss/value_avg": avg["vf"], "policy/approxkl_avg": avg["approxkl"],
            "policy/clipfrac_avg": avg["pgclip"], "val/clipfrac_avg": avg["vfclip"], "policy/entropy_avg": avg["entropy"],
            "response/length": m.sum(1).float().mean().item(), "response/stop_frac": ro["has_stop"].float().mean().item(),
        }
        stats.update({f"reward/{k}": torch.nan_to_num(v, nan=0.0).mean().item() for k, v in ro["parts"].items()})
        return stats

    def mean_across(self, values: list[float], reduction: str = "mean") -> list[float]:
        import torch

        return self.acc.reduce(torch.tensor(values, dtype=torch.float64, device=self.acc.device), reduction=reduction).tolist()

    def evaluate(self, rows, prompt_ids, n_samples: int = 0, desc: str | None = None):
        """Mean score of greedy completions over all processes' held-out prompts (and samples)."""
        from llmkit import progress

        total, count, samples = 0.0, 0, []
        chunk = self.p.local_rollout_forward_batch_size
        for s in progress.track(range(0, len(rows), chunk), desc, total=len(range(0, len(rows), chunk)), unit="batch"):
            r, ids = rows[s:s + chunk], prompt_ids[s:s + chunk]
            q, qm, resp, rmask, has_stop = self.generate(ids, greedy=True)
            scores, _ = self.score(r, q, qm, resp, rmask, has_stop)
            total, count = total + scores.sum().item(), count + len(r)
            for row, x, mk, sc in list(zip(r, resp, rmask, scores))[: max(0, n_samples - len(samples))]:
                samples.append({"prompt": row["prompt"], "completion": self.tok.decode(x[mk.bool()], skip_special_tokens=True), "reward": sc.item()})
        total, count = self.mean_across([total, count], "sum")
        return (total / count if count else float("nan")), samples

    # -- checkpoints

    def save_checkpoint(self, ckpt: Path, step: int, extra: dict) -> None:
        import torch

        ckpt.mkdir(parents=True, exist_ok=True)
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, ckpt / f"rng_state_{self.acc.process_index}.pth")
        if self.acc.is_main_process:
            self.net.policy.save_pretrained(ckpt)
            self.net.value.save_pretrained(ckpt / "value_model")
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}, ckpt / "optimizer.pt")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:  # the marker last: only complete checkpoints are resumed
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "kl_coef": self.kl.value, **extra}))
            common.rotate_checkpoints(ckpt.parent, self.p.save_total_limit)
        self.acc.wait_for_everyone()

    def load_checkpoint(self, ckpt: Path) -> dict:
        import torch
        from safetensors.torch import load_file

        state = json.loads((ckpt / "trainer_state.json").read_text())
        policy = self.net.policy
        if hasattr(policy, "peft_config"):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(policy, load_file(ckpt / "adapter_model.safetensors"))
        else:
            _load_weights(policy, ckpt)
        _load_weights(self.net.value, ckpt / "value_model")
        opt = torch.load(ckpt / "optimizer.pt", weights_only=False)
        self.opt.load_state_dict(opt["optimizer"])
        self.sched.load_state_dict(opt["scheduler"])
        self.kl.value = state["kl_coef"]
        rng_file = ckpt / f"rng_state_{self.acc.process_index}.pth"
        if rng_file.exists():
            rng = torch.load(rng_file, weights_only=False)
            random.setstate(rng["python"])
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        return state


def _load_weights(module, directory: Path) -> None:
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(directory.glob("*.safetensors")):
        sd.update(load_file(f))
    unexpected = module.load_state_dict(sd, strict=False).unexpected_keys
    if not sd or unexpected:
        raise LlmkitError(f"checkpoint {directory} does not match the model (unexpected keys: {unexpected[:3]})")


def batch_indices(step: int, n: int, per_process: int, world: int, rank: int, seed: int) -> list[int]:
    """This process's prompts for ``step`` (1-based): a fresh shuffle of all prompts per epoch,
    consumed ``per_process * world`` at a time; a pure function of the step, so a resumed run
    sees the prompts it would have seen."""
    g = per_process * world
    orders: dict[int, list[int]] = {}
    out = []
    for k in range((step - 1) * g + rank * per_process, (step - 1) * g + (rank + 1) * per_process):
        epoch, i = divmod(k, n)
        if epoch not in orders:
            orders[epoch] = random.Random(seed * 1_000_003 + epoch).sample(range(n), n)
        out.append(orders[epoch][i])
    return out


# --------------------------------------------------------------------------- main


def main(cfg: StageConfig, overwrite: bool = False) -> Path:
    started = time.time()
    a: PpoArgs = cfg.get(PpoArgs)
    margs: ModelConfig = cfg.get(ModelConfig)
    p: PPOConfig = cfg.get(PPOConfig)
    src = cfg.source

    # ---- validate before any heavy work or any write
    common.check_training_args(p, cfg)
    check_values(a, p, src)
    modeling.check_model_args(margs, src)
    modeling.check_model_source(margs.model_name_or_path)
    if margs.load_in_4bit or margs.load_in_8bit:
        raise LlmkitError(f"{src}: the ppo stage does not train in 4/8 bit; drop load_in_4bit/load_in_8bit")
    lora = modeling.peft_config(margs)
    path = margs.model_name_or_path
    tok_path = a.tokenizer_name_or_path or path
    if not a.tokenizer_name_or_path and modeling.is_adapter_dir(tok_path) and not (Path(tok_path) / "tokenizer_config.json").exists():
        tok_path = modeling.adapter_base(tok_path)
    tokenizer = modeling.load_tokenizer(tok_path)
    if not a.reward_model_path and not a.reward_funcs:
        raise LlmkitError(f"{src}: PPO needs reward_model_path or reward_funcs (names from llmkit.rewards)")
    from llmkit import rewards

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
    runs.check_output_dir(p.output_dir, overwrite)
    rows, provenance = data.load_rows(a.datasets, "prompt", p.seed)
    eval_rows, eval_prov = data.load_rows(a.eval_datasets, "prompt", p.seed, "eval_datasets") if a.eval_datasets else ([], [])
    if any(isinstance(r["prompt"], list) for r in rows + eval_rows) and not tokenizer.chat_template:
        raise LlmkitError(f"{src}: chat prompts need a chat template; the tokenizer {tok_path} has none")
    train, held = data.split_rows(rows, eval_rows, a.eval_split_size, p.seed)
    held = held[: a.max_eval_prompts]
    if not train:
        raise LlmkitError(f"{src}: no training prompts left after holding out eval_split_size={a.eval_split_size}")
    train_ids = [encode_prompt(tokenizer, r["prompt"]) for r in train]
    held_ids = [encode_prompt(tokenizer, r["prompt"]) for r in held]
    for _name, fn in funcs:  # a missing column (e.g. 'answer' for math_accuracy) fails here, not at step 1
        r0 = train[0]
        fn(prompts=[r0["prompt"]], completions=[[{"role": "assistant", "content": ""}] if isinstance(r0["prompt"], list) else ""],
           completion_ids=[[]], **{k: [v] for k, v in r0.items() if k != "prompt"})
    _check_length(path, max(len(x) for x in train_ids + held_ids), p.response_length, src)
    state = runs.distributed_state()
    world, rank = state.num_processes, state.process_index
    global_batch = p.per_device_train_batch_size * world
    if p.max_steps > 0:
        steps = p.max_steps
    elif p.total_episodes:
        steps = math.ceil(p.total_episodes / global_batch)
    else:
        steps = math.ceil(p.num_train_epochs * len(train) / global_batch)

    import torch
    from accelerate import Accelerator
    from tqdm import tqdm
    from transformers import get_scheduler, set_seed

    acc = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=p.gradient_accumulation_steps,
                      mixed_precision="bf16" if p.bf16 else "no")
    set_seed(p.seed)
    policy, ref, reward, value, mode = load_models(a, margs, lora, value_from_reward, p.trust_remote_code)
    gen_model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    for m in (ref, reward):
        if m is not None:
            m.to(acc.device)
    net = make_policy_and_value(policy, value)
    params = [x for x in net.parameters() if x.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": [x for x in params if x.ndim >= 2], "weight_decay": p.weight_decay}, {"params": [x for x in params if x.ndim < 2], "weight_decay": 0.0}],
        lr=p.learning_rate, betas=(p.adam_beta1, p.adam_beta2), eps=p.adam_epsilon,
    )
    updates = steps * p.num_ppo_epochs * p.num_mini_batches
    sched = get_scheduler(p.lr_scheduler_type, opt, num_warmup_steps=p.get_warmup_steps(updates), num_training_steps=updates,
                          scheduler_specific_kwargs=p.lr_scheduler_kwargs if isinstance(p.lr_scheduler_kwargs, dict) else None)
    model, opt = acc.prepare(net, opt)
    run = Run(acc, model, opt, sched, ref, reward, reward_tok, funcs, weights, tokenizer, p)
    gen_model.generation_config.eos_token_id = run.stop or None  # also what generate falls back to
    gen_model.generation_config.pad_token_id = tokenizer.pad_token_id
    set_seed(p.seed + rank)  # each process samples its own completions

    # ---- from here on, everything is written into the staging directory
    policy_bytes, policy_trainable, _ = common.model_footprint(policy)
    value_bytes, value_trainable, _ = common.model_footprint(value)  # checkpoints and the run hold value_model/ too
    common.check_disk_space(p, cfg, runs.staging_path(p.output_dir), policy_bytes + value_bytes, policy_trainable + value_trainable,
                            policy_bytes + value_bytes)
    staging = runs.open_staging(p.output_dir, cfg, STAGE, overwrite)
    output_dir = p.output_dir
    metrics_file = staging / "metrics.jsonl"
    metrics: dict = {"mode": mode, "reference": "adapter disabled" if ref is None else "frozen copy of the initial policy",
                     "trainable_parameters": sum(x.numel() for x in params), "train_prompts": len(train), "eval_prompts": len(held),
                     "reward_sources": (["model"] if reward is not None else []) + [n for n, _ in funcs]}
    held_mine, held_ids_mine = held[rank::world], held_ids[rank::world]
    start, state_extra = 0, {}
    common.discard_incomplete_checkpoints(staging / "checkpoints")
    resume = common.last_checkpoint(staging / "checkpoints")
    if resume:
        if acc.is_main_process:
            print(f"llmkit: resuming from {resume}", flush=True)
        saved = run.load_checkpoint(Path(resume))
        start = int(saved["global_step"])
        state_extra = {k: saved[k] for k in ("eval_reward_before",) if k in saved}
        if acc.is_main_process:
            common.drop_metrics_after(metrics_file, start)
        acc.wait_for_everyone()
    samples_before: list = []
    if held and "eval_reward_before" not in state_extra:
        state_extra["eval_reward_before"], samples_before = run.evaluate(held_mine, held_ids_mine, a.sample_prompts,
                                                                        "llmkit ppo: held-out reward (before)")
    if acc.is_main_process:
        print(f"llmkit ppo: {steps} steps x {global_batch} prompts ({world} process{'es' if world > 1 else ''}), mode {mode}, "
              f"rewards {metrics['reward_sources']}" + (f", eval reward before {state_extra['eval_reward_before']:.4f}" if held else ""), flush=True)

    log_every, save_every = (max(1, math.ceil(x * steps) if x < 1 else int(x)) for x in (p.logging_steps, p.save_steps))
    bar = tqdm(total=steps, initial=start, desc="ppo", disable=not acc.is_main_process, dynamic_ncols=True)
    t_run, last = time.time(), {}
    with common.stop_on_signal() as stop:
        for step in range(start + 1, steps + 1):
            last = train_step(run, step, steps, train, train_ids, global_batch, world, rank, t_run, log_every, metrics_file, bar)
            stopping = run.mean_across([1.0 if stop["signal"] else 0.0], "sum")[0] > 0  # all processes stop together
            if ((p.save_strategy != "no" and step % save_every == 0) or stopping) and step < steps:
                run.save_checkpoint(staging / "checkpoints" / f"checkpoint-{step}", step, state_extra)
            if stopping and step < steps:
                bar.close()
                raise common.StageInterrupted(f"stopped by {stop['signal'] or 'a signal'} after step {step}; checkpoint "
                                              f"{common.last_checkpoint(staging / 'checkpoints')} saved. Run the same command again to resume.")
    bar.close()

    samples_after: list = []
    if held:
        metrics["eval_reward_before"] = state_extra["eval_reward_before"]
        metrics["eval_reward"], samples_after = run.evaluate(held_mine, held_ids_mine, a.sample_prompts,
                                                             "llmkit ppo: held-out reward (after)")
    if last:
        metrics["final_kl"] = last["objective/kl"]
        metrics["final_reward"] = last["reward/mean"]
    gen_model.generation_config.eos_token_id = modeling.stop_token_ids(tokenizer)
    if acc.is_main_process:
        run.net.policy.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        run.net.value.save_pretrained(staging / "value_model")
        tokenizer.save_pretrained(staging / "value_model")
        if samples_after:
            before = {json.dumps(s["prompt"], ensure_ascii=False): s for s in samples_before}
            with open(staging / "samples.jsonl", "w", encoding="utf-8") as fh:
                for s in samples_after:
                    b = before.get(json.dumps(s["prompt"], ensure_ascii=False), {})
                    fh.write(json.dumps({"prompt": s["prompt"], "before": b.get("completion"), "reward_before": b.get("reward"),
                                         "after": s["completion"], "reward_after": s["reward"]}, ensure_ascii=False) + "\n")
    acc.wait_for_everyone()
    inputs = {"model": path, "tokenizer": tok_path, "reward_model": a.reward_model_path, "reward_funcs": a.reward_funcs,
              "value_model": a.value_model_path or (a.reward_model_path if value_from_reward else "policy + new score head"),
              "datasets": provenance, "eval_datasets": eval_prov}
    metrics["episodes"] = steps * global_batch
    return common.finish_training_stage(STAGE, cfg, staging, output_dir, started, inputs, metrics, steps,
                                        plot_keys=("reward/mean", "objective/kl"),
                                        lineage=lineage.new_run_lineage(path, output_dir, STAGE, mode))


def train_step(run: Run, step: int, steps: int, train, train_ids, global_batch: int, world: int, rank: int, t_run: float,
               log_every: int, metrics_file: Path, bar) -> dict:
    """One PPO step: rollouts of this process's prompts, the update, metrics (all processes)."""
    from tqdm import tqdm

    t0, p = time.time(), run.p
    idx = batch_indices(step, len(train), p.per_device_train_batch_size, world, rank, p.seed)
    ro = run.rollout([train[i] for i in idx], [train_ids[i] for i in idx])
    stats = run.update(ro)
    keys = sorted(stats)
    stats = dict(zip(keys, run.mean_across([stats[k] for k in keys])))
    tokens = run.mean_across([float(ro["am"].sum())], "sum")[0]
    row = {"step": step, "episode": step * global_batch, **stats, "kl_coef": run.kl.value, "lr": run.sched.get_last_lr()[0],
           "tokens_per_s": round(tokens / max(time.time() - t0, 1e-9), 1), "time_s": round(time.time() - t_run, 2)}
    if p.adaptive_kl:
        run.kl.update(stats["objective/kl"], global_batch)
    if run.acc.is_main_process and (step % log_every == 0 or step == steps):
        with open(metrics_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        tqdm.write(f"[step {step}/{steps}] reward {row['reward/mean']:.4f} | kl {row['objective/kl']:.3f} (coef {row['kl_coef']:.3g}) | "
                   f"entropy {row['objective/entropy']:.2f} | policy {row['loss/policy_avg']:.4f} clip {row['policy/clipfrac_avg']:.3f} "
                   f"approxkl {row['policy/approxkl_avg']:.4f} | value {row['loss/value_avg']:.4f} clip {row['val/clipfrac_avg']:.3f} | "
                   f"lr {row['lr']:.3g} | {row['tokens_per_s']:.0f} tok/s")
    bar.update(1)
    bar.set_postfix(reward=f"{row['reward/mean']:.3f}", kl=f"{row['objective/kl']:.3f}")
    return row


def _check_length(path: str, prompt: int, response: int, src: str) -> None:
    """Longest prompt + response_length must fit the policy's context."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(modeling.adapter_base(path) if modeling.is_adapter_dir(path) else path)
    except (OSError, ValueError):
        return  # a hub model not available offline: loading it will say so
    limit = getattr(config, "max_position_embeddings", None)
    if limit and prompt + response > limit:
        raise LlmkitError(f"{src}: the longest prompt ({prompt} tokens) plus response_length {response} is more than the model's {limit} positions")
