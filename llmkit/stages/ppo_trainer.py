"""llmkit's PPOConfig and PPOTrainer (TRL >= 1.13 ships neither): rollouts, rewards, GAE and
clipped updates over transformers, PEFT and accelerate, with checkpoints and resume through the
shared code (stages/checkpoints.py).  The math is in ppo_core.py; the stage (llmkit's own keys,
validation, data, run directory) in ppo.py.

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

from llmkit import modeling
from llmkit.config import LlmkitError
from llmkit.stages import checkpoints
from llmkit.stages import ppo_core as core

# --------------------------------------------------------------------------- the config


@dataclass
class PPOConfig(TrainingArguments):
    """TrainingArguments plus the PPO keys (the names of TRL's former PPOConfig)."""


    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes of PPO updates over each batch of rollouts."})
    num_mini_batches: int = field(default=1, metadata={
        "help": "Mini-batches (optimizer steps) per pass; must divide per_device_train_batch_size."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Rescale the per-token rewards to unit std (mean kept) before GAE."})
    kl_coef: float = field(default=0.05, metadata={
        "help": "Weight of the per-token KL penalty to the reference (initial value with adaptive_kl)."})
    kl_estimator: str = field(default="k1", metadata={
        "help": "Per-token KL estimator: k1 (logp - ref) or k3 (non-negative, lower variance)."})
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
    stop_token: str | None = field(default="eos", metadata={
        "help": "'eos': responses end at EOS or the chat end-of-turn token (<|im_end|>); null: never cut."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "Subtracted from the score of responses without a stop token."})
    total_episodes: int | None = field(default=None, metadata={
        "help": "Completions to train on (all processes); used when max_steps is not set."})
    local_rollout_forward_batch_size: int = field(default=64, metadata={
        "help": "Chunk size of generation and no-grad forward passes during rollouts."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub (as in TRL's configs)."})


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


def load_models(a, margs, lora, value_from_reward: bool, trust_remote_code: bool):
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


# --------------------------------------------------------------------------- the trainer


class PPOTrainer:
    """One PPO run: ``setup`` (models, optimizer, scheduler, accelerate), ``train`` (resume, the
    held-out reward before, the steps, checkpoints, the SIGTERM stop), ``train_step`` (rollouts,
    update, metrics), ``evaluate`` (greedy held-out reward) and ``save`` (policy and value)."""

    def __init__(self, args, tokenizer, train_rows: list[dict], held_rows: list[dict], sample_prompts: int = 0):
        import torch
        from accelerate import Accelerator

        p = self.p = args
        self.tok, self.sample_prompts = tokenizer, sample_prompts
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=p.gradient_accumulation_steps,
                               mixed_precision="bf16" if p.bf16 else "no")
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.global_batch = p.per_device_train_batch_size * self.world
        self.steps = num_steps(p, len(train_rows), self.global_batch)
        self.train_rows, self.train_ids = train_rows, [encode_prompt(tokenizer, r["prompt"]) for r in train_rows]
        held_ids = [encode_prompt(tokenizer, r["prompt"]) for r in held_rows]
        self.longest_prompt = max(len(x) for x in self.train_ids + held_ids)
        self.held, self.held_ids = held_rows[self.rank::self.world], held_ids[self.rank::self.world]  # each process: its share
        self.stop = modeling.stop_token_ids(tokenizer) if p.stop_token == "eos" else []
        self.kl = core.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)
        self.state: dict = {}  # kept in every checkpoint: the held-out reward before training
        self.samples_before: list[dict] = []

    def setup(self, models: tuple, reward_tok, funcs: list, weights: list[float]) -> None:
        """The models (load_models: policy, reference or None for 'the policy with its adapter
        off', reward model or None, value model, mode), the reward sources (``funcs``: (name,
        function) pairs; ``weights``: the reward model first; ``reward_tok``: the reward model's
        own tokenizer, or None when it reads the policy's tokens), one AdamW over the policy's
        and the value's trainable weights, the scheduler, accelerate."""
        import torch
        from transformers import get_scheduler, set_seed

        p = self.p
        policy, ref, reward, value, self.mode = models
        self.ref, self.reward, self.reward_tok, self.funcs, self.weights = ref, reward, reward_tok, funcs, weights
        self.sources = (["model"] if reward is not None else []) + [n for n, _ in funcs]
        for m in (ref, reward):
            if m is not None:
                m.to(self.acc.device)
        net = make_policy_and_value(policy, value)
        params = [x for x in net.parameters() if x.requires_grad]
        self.trainable = sum(x.numel() for x in params)
        groups = [{"params": [x for x in params if x.ndim >= 2], "weight_decay": p.weight_decay},
                  {"params": [x for x in params if x.ndim < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups,
                                lr=p.learning_rate, betas=(p.adam_beta1, p.adam_beta2), eps=p.adam_epsilon)
        updates = self.steps * p.num_ppo_epochs * p.num_mini_batches
        kwargs = p.lr_scheduler_kwargs if isinstance(p.lr_scheduler_kwargs, dict) else None
        self.sched = get_scheduler(p.lr_scheduler_type, opt, num_warmup_steps=p.get_warmup_steps(updates), num_training_steps=updates,
                                   scheduler_specific_kwargs=kwargs)
        self.model, self.opt = self.acc.prepare(net, opt)
        self.gen_model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        self.gen_model.generation_config.eos_token_id = self.stop or None  # also what generate falls back to
        self.gen_model.generation_config.pad_token_id = self.tok.pad_token_id
        set_seed(p.seed + self.rank)  # each process samples its own completions

    def train(self, staging: Path) -> dict:
        """Resume from the newest complete checkpoint in ``staging`` (if any), score the held-out
        prompts before training (unless the checkpoint has it), run the remaining steps with a
        checkpoint every ``save_steps``; SIGTERM/SIGINT ends the step, saves and raises
        StageInterrupted.  Returns the last step's metrics row."""
        from tqdm import tqdm

        p, steps = self.p, self.steps
        self.metrics_file = staging / "metrics.jsonl"
        resume = checkpoints.resume_point(staging)
        start = self.load_checkpoint(Path(resume)) if resume else 0
        if self.held and "eval_reward_before" not in self.state:
            self.state["eval_reward_before"], self.samples_before = self.held_out_reward("llmkit ppo: held-out reward (before)")
            self.state["eval_scores_before"] = self.last_scores
        if self.acc.is_main_process:
            before = f", eval reward before {self.state['eval_reward_before']:.4f}" if self.held else ""
            print(f"llmkit ppo: {steps} steps x {self.global_batch} prompts ({self.world} process{'es' if self.world > 1 else ''}), "
                  f"mode {self.mode}, rewards {self.sources}{before}", flush=True)
        self.log_every, save_every = (max(1, math.ceil(x * steps) if x < 1 else int(x)) for x in (p.logging_steps, p.save_steps))
        self.bar = tqdm(total=steps, initial=start, desc="ppo", disable=not self.acc.is_main_process, dynamic_ncols=True)
        self.t_run, last = time.time(), {}
        with checkpoints.stop_on_signal() as stop:
            for step in range(start + 1, steps + 1):
                last = self.train_step(step)
                stopping = checkpoints.signal_on_any_process(stop)  # all processes stop together
                if ((p.save_strategy != "no" and step % save_every == 0) or stopping) and step < steps:
                    self.save_checkpoint(staging / "checkpoints" / f"checkpoint-{step}", step)
                if stopping and step < steps:
                    self.bar.close()
                    raise checkpoints.StageInterrupted(
                        f"stopped by {stop['signal'] or 'a signal'} after step {step}; checkpoint "
                        f"{checkpoints.last_checkpoint(staging / 'checkpoints')} saved. Run the same command again to resume.")
        self.bar.close()
        return last

    def train_step(self, step: int) -> dict:
        """One PPO step: rollouts of this process's prompts, the update, metrics (all processes)."""
        from tqdm import tqdm

        t0, p, steps = time.time(), self.p, self.steps
        idx = batch_indices(step, len(self.train_rows), p.per_device_train_batch_size, self.world, self.rank, p.seed)
        ro = self.rollout([self.train_rows[i] for i in idx], [self.train_ids[i] for i in idx])
        stats = self.update(ro)
        keys = sorted(stats)
        stats = dict(zip(keys, self.mean_across([stats[k] for k in keys])))
        tokens = self.mean_across([float(ro["am"].sum())], "sum")[0]
        row = {"step": step, "episode": step * self.global_batch, **stats, "kl_coef": self.kl.value, "lr": self.sched.get_last_lr()[0],
               "tokens_per_s": round(tokens / max(time.time() - t0, 1e-9), 1), "time_s": round(time.time() - self.t_run, 2)}
        if p.adaptive_kl:
            self.kl.update(stats["objective/kl"], self.global_batch)
        if self.acc.is_main_process and (step % self.log_every == 0 or step == steps):
            with open(self.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            tqdm.write(f"[step {step}/{steps}] reward {row['reward/mean']:.4f} | kl {row['objective/kl']:.3f} "
                       f"(coef {row['kl_coef']:.3g}) | entropy {row['objective/entropy']:.2f} | policy {row['loss/policy_avg']:.4f} "
                       f"clip {row['policy/clipfrac_avg']:.3f} approxkl {row['policy/approxkl_avg']:.4f} | "
                       f"value {row['loss/value_avg']:.4f} clip {row['val/clipfrac_avg']:.3f} | "
                       f"lr {row['lr']:.3g} | {row['tokens_per_s']:.0f} tok/s")
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{row['reward/mean']:.3f}", kl=f"{row['objective/kl']:.3f}")
        return row

    def save(self, out: Path) -> None:
        """The policy (or its adapter) + tokenizer into ``out``, the value model into ``out``/value_model
        (main process); generate() stops at the tokenizer's stop tokens again."""
        self.gen_model.generation_config.eos_token_id = modeling.stop_token_ids(self.tok)
        if self.acc.is_main_process:
            self.net.policy.save_pretrained(out)
            self.tok.save_pretrained(out)
            self.net.value.save_pretrained(out / "value_model")
            self.tok.save_pretrained(out / "value_model")
        self.acc.wait_for_everyone()

    @property
    def net(self):
        """The policy-and-value module without accelerate's wrapper."""
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

    def held_out_reward(self, desc: str | None = None):
        """(mean reward of greedy completions to the held-out prompts of all processes, this
        process's first ``sample_prompts`` completions)."""
        return self.evaluate(self.held, self.held_ids, self.sample_prompts, desc)

    def evaluate(self, rows, prompt_ids, n_samples: int = 0, desc: str | None = None):
        """Mean score of greedy completions over all processes' held-out prompts (and samples)."""
        from llmkit import progress

        total, count, samples, every = 0.0, 0, [], []
        chunk = self.p.local_rollout_forward_batch_size
        for s in progress.track(range(0, len(rows), chunk), desc, total=len(range(0, len(rows), chunk)), unit="batch"):
            r, ids = rows[s:s + chunk], prompt_ids[s:s + chunk]
            q, qm, resp, rmask, has_stop = self.generate(ids, greedy=True)
            scores, _ = self.score(r, q, qm, resp, rmask, has_stop)
            total, count = total + scores.sum().item(), count + len(r)
            every += scores.tolist()
            for row, x, mk, sc in list(zip(r, resp, rmask, scores))[: max(0, n_samples - len(samples))]:
                text = self.tok.decode(x[mk.bool()], skip_special_tokens=True)
                samples.append({"prompt": row["prompt"], "completion": text, "reward": sc.item()})
        total, count = self.mean_across([total, count], "sum")
        from accelerate.utils import gather_object

        self.last_scores = gather_object(every) if self.world > 1 else every  # every held-out prompt's score, in order
        return (total / count if count else float("nan")), samples

    # -- checkpoints (complete when trainer_state.json, written last, is there: checkpoints.checkpoint_complete)

    def save_checkpoint(self, ckpt: Path, step: int) -> None:
        """Weights, optimizer, scheduler, KL coefficient, RNG of every process, and self.state."""
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
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "kl_coef": self.kl.value, **self.state}))
            checkpoints.rotate_checkpoints(ckpt.parent, self.p.save_total_limit)
        self.acc.wait_for_everyone()

    def load_checkpoint(self, ckpt: Path) -> int:
        """Restore what save_checkpoint wrote; returns the checkpoint's step."""
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
        self.state = {k: state[k] for k in ("eval_reward_before", "eval_scores_before") if k in state}
        self.acc.wait_for_everyone()
        return int(state["global_step"])


def _load_weights(module, directory: Path) -> None:
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(directory.glob("*.safetensors")):
        sd.update(load_file(f))
    unexpected = module.load_state_dict(sd, strict=False).unexpected_keys
    if not sd or unexpected:
        raise LlmkitError(f"checkpoint {directory} does not match the model (unexpected keys: {unexpected[:3]})")


def num_steps(p, n_prompts: int, global_batch: int) -> int:
    """``max_steps``, else ``total_episodes`` / the global batch, else ``num_train_epochs`` over the prompts."""
    if p.max_steps > 0:
        return p.max_steps
    if p.total_episodes:
        return math.ceil(p.total_episodes / global_batch)
    return math.ceil(p.num_train_epochs * n_prompts / global_batch)


def encode_prompt(tokenizer, prompt) -> list[int]:
    return tokenizer(modeling.prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


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

