"""The ppo stage: its arithmetic against numbers worked out by hand, then real runs on CPU.

* ppo_core: GAE with padding, masked whitening, clipped policy and value losses, k1/k3 KL,
  the per-token reward, stop-token truncation, the adaptive KL controller;
* a toy task whose optimum is known (score = share of completion tokens that contain the
  letter "a"): the sampled reward climbs to near 1 while the KL to the reference stays
  bounded, the greedy held-out reward rises, the run directory is complete;
* the reference is the initial policy in every mode (full, fresh LoRA, LoRA run): KL = 0 at
  step 1, including a LoRA run whose adapter is far from a no-op;
* a reward model as reward and value init, a reward model with another tokenizer
  (refused, then scored through re-tokenization);
* the bad-input contract, two processes under accelerate, resume after SIGKILL (identical to
  an uninterrupted run), SIGTERM (checkpoint, exit 143), the tiny-es recipe.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY_MODEL, frac_a_reward, llmkit, read_jsonl, write_jsonl

from llmkit.stages import ppo_core as core


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run several times faster on one thread (and do not fight other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- ppo_core by hand

def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_by_hand_with_padding():
    # row 0: three tokens then padding (whose reward and value are garbage and must not count)
    rewards = t([0.5, -1.0, 2.0, 9.0], [0.0, 0.0, 0.0, 1.0])
    values = t([1.0, 0.5, -0.5, 7.0], [0.0, 0.0, 0.0, 0.0])
    mask = t([1, 1, 1, 0], [1, 1, 1, 1])
    adv, ret = core.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, backwards (gamma * lam = 0.72; V after the last token is 0):
    #   d2 = 2.0 + 0.9 * 0 - (-0.5) = 2.5                 A2 = 2.5
    #   d1 = -1.0 + 0.9 * (-0.5) - 0.5 = -1.95            A1 = -1.95 + 0.72 * 2.5 = -0.15
    #   d0 = 0.5 + 0.9 * 0.5 - 1.0 = -0.05                A0 = -0.05 + 0.72 * (-0.15) = -0.158
    # row 1: only the last token is rewarded: A3 = 1, A2 = 0.72, A1 = 0.72^2, A0 = 0.72^3
    expected = t([-0.158, -0.15, 2.5, 0.0], [0.373248, 0.5184, 0.72, 1.0])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + t([1.0, 0.5, -0.5, 0.0], [0, 0, 0, 0]))


def test_masked_whiten_by_hand():
    x = t([1, 2, 3, 100], [4, 5, 6, 7])
    mask = t([1, 1, 1, 0], [1, 1, 1, 1])
    # masked entries 1..7: mean 4, population variance (9+4+1+0+1+4+9)/7 = 4, std 2
    w = core.masked_whiten(x, mask)
    torch.testing.assert_close(w, t([-1.5, -1.0, -0.5, 0.0], [0.0, 0.5, 1.0, 1.5]), atol=1e-6, rtol=0)
    assert abs(core.masked_mean(w, mask).item()) < 1e-9
    assert abs(core.masked_mean(w**2, mask).item() - 1.0) < 1e-6
    kept = core.masked_whiten(x, mask, shift_mean=False)  # rescaled, mean kept
    torch.testing.assert_close(kept, t([2.5, 3.0, 3.5, 0.0], [4.0, 4.5, 5.0, 5.5]), atol=1e-6, rtol=0)


def test_clipped_policy_loss_by_hand():
    old = t([0.0, 0.0, 0.0, 0.0, 0.0])
    new = torch.log(t([2.0, 0.5, 1.1, 2.0, 3.0]))  # ratios
    adv = t([1.0, -1.0, 2.0, -1.0, 5.0])
    mask = t([1, 1, 1, 1, 0])  # the 5th token is padding
    loss, clipfrac, approxkl = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # token: unclipped -A*r, clipped -A*clip(r, .8, 1.2) -> max
    #  1: -2.0 vs -1.2 -> -1.2 (clipped)    2: 0.5 vs 0.8 -> 0.8 (clipped)
    #  3: -2.2 vs -2.2 -> -2.2 (tie: not clipped)    4: 2.0 vs 1.2 -> 2.0 (unclipped is worse: kept)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 + 2.0) / 4)
    assert clipfrac.item() == pytest.approx(2 / 4)
    logs = [math.log(2.0), math.log(0.5), math.log(1.1), math.log(2.0)]
    assert approxkl.item() == pytest.approx(0.5 * sum(x * x for x in logs) / 4)


def test_clipped_value_loss_by_hand():
    v, old, ret = t([1.0, 0.0, 0.3]), t([0.5, 0.0, 0.0]), t([2.0, 0.1, 5.0])
    mask = t([1, 1, 0])
    loss, clipfrac = core.value_loss(v, old, ret, mask, cliprange_value=0.2)
    # 1: v_clip = 0.5 + 0.2 = 0.7; (1-2)^2 = 1 vs (0.7-2)^2 = 1.69 -> 1.69 (clipped)
    # 2: v_clip = 0; 0.01 vs 0.01 -> 0.01 (not clipped)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.01) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_kl_estimators_and_token_rewards_by_hand():
    logp, ref = t([-1.0, -2.0, -3.0]), t([-1.5, -1.0, -3.0])  # log ratios 0.5, -1.0, 0
    torch.testing.assert_close(core.kl_per_token(logp, ref, "k1"), t([0.5, -1.0, 0.0]))
    k3 = core.kl_per_token(logp, ref, "k3")  # exp(-lr) - 1 + lr
    torch.testing.assert_close(k3, t([math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]))
    assert (k3 >= 0).all()
    with pytest.raises(ValueError):
        core.kl_per_token(logp, ref, "k2")
    kl = t([0.5, -1.0, 4.0], [1.0, 1.0, 1.0])
    mask = t([1, 1, 0], [1, 1, 1])
    rewards, non_score = core.token_rewards(kl, t(3.0, -2.0), mask, kl_coef=0.1)
    torch.testing.assert_close(non_score, t([-0.05, 0.1, 0.0], [-0.1, -0.1, -0.1]))
    torch.testing.assert_close(rewards, t([-0.05, 3.1, 0.0], [-0.1, -0.1, -2.1]))  # score on the last real token


def test_adaptive_kl_controller():
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # kl 9 > target: error = clip(9/6 - 1, ±0.2) = 0.2; 1000 episodes -> x (1 + 0.2 * 0.1) = 1.02
    assert ctl.update(9.0, 1000) == pytest.approx(0.102)
    # kl 5.4 < target: error = -0.1 -> x 0.99
    assert ctl.update(5.4, 1000) == pytest.approx(0.102 * 0.99)
    # far below, a whole horizon of episodes: the clip caps the change at -20%
    assert ctl.update(0.0, 10000) == pytest.approx(0.102 * 0.99 * 0.8)
    assert core.AdaptiveKLController(0.1, 6.0, 10000).update(6.0, 5000) == pytest.approx(0.1)  # on target: unchanged


def test_truncate_after_stop_and_positions():
    resp = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [3, 3, 3, 3]])
    out, mask, has_stop = core.truncate_after_stop(resp, [2, 3], pad_id=0)
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [3, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_stop.tolist() == [True, False, True]
    assert core.position_ids(torch.tensor([[0, 0, 1, 1, 1, 0]])).tolist() == [[0, 0, 0, 1, 2, 2]]


def test_each_process_gets_its_own_prompts_and_epochs_cover_all():
    from llmkit.stages.ppo_trainer import batch_indices

    n = 10
    seen = [batch_indices(s, n, per_process=2, world=2, rank=r, seed=1) for s in (1, 2) for r in (0, 1)]
    flat = [i for b in seen for i in b]
    assert len(set(flat)) == 8  # no prompt twice within an epoch
    epoch = [i for s in (1, 2, 3) for r in (0, 1) for i in batch_indices(s, n, 2, 2, r, 1)][:10]
    assert sorted(epoch) == list(range(n))
    assert batch_indices(7, n, 2, 2, 1, 1) == batch_indices(7, n, 2, 2, 1, 1)  # a pure function of the step


# --------------------------------------------------------------------------- fixtures for runs

def prompt_rows(n: int, chat: bool = True) -> list[dict]:
    """Chat prompts, or plain-text ones (one file holds one layout; a mixture of files may mix)."""
    return [{"prompt": [{"role": "user", "content": f"Escribe algo sobre el {i}."}] if chat else f"Pregunta {i}: ¿qué es un número?",
             "answer": str(i)} for i in range(n)]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ppo_data") / "prompts.jsonl", prompt_rows(64))


def test_plain_and_chat_prompt_files_mix(tmp_path, base_model, prompts):
    """Both prompt kinds reach the policy: a mixture of a chat-prompt file and a plain-text one."""
    plain = write_jsonl(tmp_path / "plain.jsonl", prompt_rows(16, chat=False))
    out = tmp_path / "mix"
    rc = llmkit("ppo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{prompts}, {plain}]",
                "--eval_split_size", "4", "--reward_funcs", "[spanish]", "--response_length", "4", "--per_device_train_batch_size", "4",
                "--max_steps", "2", "--save_strategy", "no", "--sample_prompts", "0")
    assert rc == 0
    assert json.loads((out / "manifest.json").read_text())["steps"] == 2


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, base_model) -> Path:
    """A stand-in reward run: a tiny random sequence classifier (num_labels=1) + the tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmkit.modeling import new_model_config

    out = tmp_path_factory.mktemp("ppo_reward") / "reward"
    tok = AutoTokenizer.from_pretrained(base_model)
    torch.manual_seed(1)
    cfg = new_model_config(TINY_MODEL, tok)
    cfg.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(cfg)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, peaked_policy) -> Path:
    """A LoRA run directory (over the peaked policy) whose adapter is far from a no-op (B is random, not 0)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("ppo_adapter") / "sft"
    torch.manual_seed(2)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(peaked_policy),
                           LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(peaked_policy).save_pretrained(out)
    return out


def ppo(out: Path, model: Path, data: Path, *extra) -> list:
    return ["ppo", "--output_dir", out, "--model_name_or_path", model, "--datasets", f"[{data}]", "--eval_split_size", "8",
            "--response_length", "8", "--per_device_train_batch_size", "8", "--num_ppo_epochs", "2", "--learning_rate", "1e-3",
            "--temperature", "1.0", "--save_strategy", "no", "--sample_prompts", "2", *extra]


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def metrics(run: Path) -> list[dict]:
    return read_jsonl(run / "metrics.jsonl")


# --------------------------------------------------------------------------- the toy task

TOY_STEPS = 40
TOY_KL_COEF = 0.02


def test_toy_task_reward_rises_with_bounded_kl(tmp_path, peaked_policy, prompts, monkeypatch, capsys):
    """Score = share of the 8 completion tokens that contain "a" (~0.2 at the start).  The
    KL-regularised optimum is pi_ref(y) * exp(score / kl_coef) normalised: per token, the odds of
    an "a" token grow by exp(1 / (8 * kl_coef)) ~ 500, i.e. a score near 1, at a KL of at most
    (1 - initial score) / kl_coef nats (beyond that the penalty costs more than any score)."""
    from llmkit import rewards

    monkeypatch.setitem(rewards.REWARDS, "frac_a", frac_a_reward(peaked_policy))
    out = tmp_path / "toy"
    t0 = time.time()
    rc = llmkit(*ppo(out, peaked_policy, prompts, "--reward_funcs", "[frac_a]", "--max_steps", TOY_STEPS,
                     "--per_device_train_batch_size", "16", "--num_mini_batches", "2", "--num_ppo_epochs", "4",
                     "--kl_coef", TOY_KL_COEF, "--learning_rate", "2e-4"))
    assert rc == 0
    rows = metrics(out)
    reward = [r["reward/mean"] for r in rows]
    kl = [r["objective/kl"] for r in rows]
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    m = manifest(out)["metrics"]
    with capsys.disabled():
        print(f"\ntoy task: {time.time() - t0:.1f}s, reward first 5 steps {first:.3f} -> last 5 {last:.3f}, KL max {max(kl):.2f} "
              f"(bound {(1 - first) / TOY_KL_COEF:.0f}), eval reward {m['eval_reward_before']:.3f} -> {m['eval_reward']:.3f}")
    assert [r["step"] for r in rows] == list(range(1, TOY_STEPS + 1))
    assert abs(kl[0]) < 1e-5  # the reference is the initial policy
    assert last > first + 0.25, reward
    assert max(kl) < (1 - first) / TOY_KL_COEF, kl
    assert m["eval_reward"] > m["eval_reward_before"] + 0.2
    # the same held-out prompts before and after, one by one: a gain this size is beyond noise
    assert m["paired_higher"] + m["paired_lower"] <= m["eval_prompts"] and m["paired_higher"] > m["paired_lower"]
    assert m["paired_p"] < 0.05
    assert m["final_kl"] == pytest.approx(kl[-1])
    for f in ("model.safetensors", "config.json", "tokenizer.json", "value_model/model.safetensors", "value_model/config.json",
              "metrics.jsonl", "loss.png", "samples.jsonl", "config.yaml", "manifest.json"):
        assert (out / f).is_file(), f
    for k in ("episode", "objective/entropy", "objective/non_score_reward", "loss/policy_avg", "loss/value_avg",
              "policy/approxkl_avg", "policy/clipfrac_avg", "val/clipfrac_avg", "kl_coef", "lr", "tokens_per_s"):
        assert k in rows[-1], k
    assert rows[-1]["episode"] == TOY_STEPS * 16
    assert rows[-1]["lr"] < rows[0]["lr"]  # linear decay
    assert not (tmp_path / "toy.partial").exists()
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 2 and {"before", "after", "reward_before", "reward_after"} <= set(samples[0])
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    AutoModelForCausalLM.from_pretrained(out)
    value = AutoModelForSequenceClassification.from_pretrained(out / "value_model")
    assert value.config.num_labels == 1 and value.score.weight.abs().sum() > 0  # the new head (set to 0) has learned


# --------------------------------------------------------------------------- the reference in every mode

def _mean_kl_to_base(adapter: Path, base: Path) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter)
    x = tok("Pregunta 3: ¿qué es un número? La respuesta es", return_tensors="pt")
    with torch.no_grad():
        b = AutoModelForCausalLM.from_pretrained(base)(**x).logits.log_softmax(-1)
        a = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)(**x).logits.log_softmax(-1)
    return (a.exp() * (a - b)).sum(-1).mean().item()


def test_lora_run_keeps_training_its_adapter_against_itself(tmp_path, adapter_run, peaked_policy, prompts):
    """Policy = a LoRA run: the adapter keeps training, the reference is base + that adapter
    (KL 0 at step 1), not the bare base (which is far from it)."""
    from safetensors.torch import load_file

    assert _mean_kl_to_base(adapter_run, peaked_policy) > 0.05  # switching this adapter off would be noticed
    out = tmp_path / "lora_run"
    assert llmkit(*ppo(out, adapter_run, prompts, "--reward_funcs", "[spanish, length]", "--reward_weights", "[1.0, 0.5]",
                       "--max_steps", "3", "--learning_rate", "5e-3")) == 0
    rows = metrics(out)
    # merged weights vs base + LoRA differ only by float rounding; the base alone would be > 8 x 0.05
    assert abs(rows[0]["objective/kl"]) < 1e-3 and rows[-1]["objective/kl"] != 0
    assert {"reward/spanish", "reward/length"} <= set(rows[0])
    assert rows[0]["reward/mean"] == pytest.approx(rows[0]["reward/spanish"] + 0.5 * rows[0]["reward/length"], abs=1e-6)
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(peaked_policy)
    before, after = load_file(adapter_run / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    m = manifest(out)["metrics"]
    assert m["mode"] == "lora (continued)" and m["reference"] == "frozen copy of the initial policy"


def test_fresh_lora_uses_the_policy_with_its_adapter_off_as_reference(tmp_path, base_model, prompts):
    out = tmp_path / "fresh_lora"
    assert llmkit(*ppo(out, base_model, prompts, "--reward_funcs", "[spanish]", "--max_steps", "2", "--use_peft",
                       "--lora_r", "4", "--lora_target_modules", "[q_proj, v_proj]", "--learning_rate", "5e-3")) == 0
    rows = metrics(out)
    assert abs(rows[0]["objective/kl"]) < 1e-5 and rows[1]["objective/kl"] != 0
    assert (out / "adapter_config.json").is_file() and (out / "value_model" / "model.safetensors").is_file()
    m = manifest(out)["metrics"]
    assert m["mode"] == "lora" and m["reference"] == "adapter disabled"


# --------------------------------------------------------------------------- reward models

def test_sequence_scores_is_the_classifier_at_the_last_token(reward_run):
    """Left-padded prompt + right-padded response: the score is the one HF's classifier gives
    the same tokens without padding."""
    from transformers import AutoModelForSequenceClassification

    from llmkit.stages.ppo_trainer import sequence_scores

    model = AutoModelForSequenceClassification.from_pretrained(reward_run).eval()
    seqs = [[5, 17, 40, 41, 9], [7, 8, 9], [30, 31, 32, 33, 34, 35, 36]]
    ids = torch.zeros(3, 9, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, (pad_left, s) in enumerate(zip([2, 3, 0], seqs)):
        ids[i, pad_left:pad_left + len(s)], am[i, pad_left:pad_left + len(s)] = torch.tensor(s), 1
    got = sequence_scores(model, ids, am, chunk=2)
    with torch.no_grad():
        want = torch.cat([model(input_ids=torch.tensor([s])).logits[:, 0] for s in seqs])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reward_model_as_reward_and_value_init(tmp_path, reward_run, base_model, prompts):
    from safetensors.torch import load_file

    out = tmp_path / "rm"
    assert llmkit(*ppo(out, base_model, prompts,
                       "--reward_model_path", reward_run, "--reward_funcs", "[spanish]", "--max_steps", "2")) == 0
    rows = metrics(out)
    assert {"reward/model", "reward/spanish"} <= set(rows[0])
    m = manifest(out)
    assert m["inputs"]["value_model"] == str(reward_run) and m["metrics"]["reward_sources"] == ["model", "spanish"]
    value, rm = load_file(out / "value_model" / "model.safetensors"), load_file(reward_run / "model.safetensors")
    assert value.keys() == rm.keys() and any(not torch.equal(value[k], rm[k]) for k in rm)  # started from it, then trained



@pytest.fixture(scope="module")
def other_tokenizer_reward_run(tmp_path_factory, reward_run) -> Path:
    """The reward run with one token more in its tokenizer (and embeddings)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("ppo_reward_other") / "reward"
    tok = AutoTokenizer.from_pretrained(reward_run)
    tok.add_tokens(["qzqzextra"])
    model = AutoModelForSequenceClassification.from_pretrained(reward_run)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_reward_model_with_another_tokenizer(tmp_path, capsys, base_model, prompts, other_tokenizer_reward_run):
    out = tmp_path / "rm_other"
    argv = ppo(out, base_model, prompts, "--reward_model_path", other_tokenizer_reward_run, "--max_steps", "2")
    refused(capsys, argv, out, ["reward_model_path", "different tokenizer", "reward_retokenize: true"])
    assert llmkit(*argv, "--reward_retokenize", "true") == 0
    m = manifest(out)
    assert m["inputs"]["value_model"] == "policy + new score head"  # it cannot read the reward model's tokens
    assert "reward/model" in metrics(out)[0]


# --------------------------------------------------------------------------- bad input

ERROR = "llmkit: error:"


def refused(capsys, argv: list, out: Path, needles: list[str]) -> str:
    """Exit 2, one error line holding every needle, no traceback, nothing written."""
    capsys.readouterr()
    rc = llmkit(*argv)
    cap = capsys.readouterr()
    shown = f"rc={rc}\nstdout:\n{cap.out[-2000:]}\nstderr:\n{cap.err[-2000:]}"
    assert rc == 2, shown
    assert "Traceback" not in cap.out + cap.err, shown
    lines = [ln for ln in cap.err.splitlines() if ERROR in ln]
    assert len(lines) == 1 and lines[0].startswith(ERROR), shown
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    return lines[0]


BAD = {
    "no reward": ([], ["PPO needs reward_model_path or reward_funcs"]),
    "unknown reward function": (["--reward_funcs", "[spanish, nope]"], ["unknown reward function 'nope'"]),
    "reward weights count": (["--reward_funcs", "[spanish]", "--reward_weights", "[1, 2]"],
                             ["reward_weights", "one number per reward source"]),
    "mini-batches do not divide": (["--reward_funcs", "[spanish]", "--num_mini_batches", "3"], ["num_mini_batches=3 does not divide", "8"]),
    "accumulation does not divide": (["--reward_funcs", "[spanish]", "--num_mini_batches", "2", "--gradient_accumulation_steps", "3"],
                                     ["gradient_accumulation_steps=3", "mini-batch of 4"]),
    "negative kl_coef": (["--reward_funcs", "[spanish]", "--kl_coef", "-0.1"], ["kl_coef must be >= 0"]),
    "cliprange 0": (["--reward_funcs", "[spanish]", "--cliprange", "0"], ["cliprange must be > 0"]),
    "cliprange_value negative": (["--reward_funcs", "[spanish]", "--cliprange_value", "-1"], ["cliprange_value must be > 0"]),
    "gamma above 1": (["--reward_funcs", "[spanish]", "--gamma", "1.5"], ["gamma must be in [0, 1]"]),
    "lam below 0": (["--reward_funcs", "[spanish]", "--lam", "-0.1"], ["lam must be in [0, 1]"]),
    "response_length 0": (["--reward_funcs", "[spanish]", "--response_length", "0"], ["response_length must be at least 1"]),
    "kl estimator": (["--reward_funcs", "[spanish]", "--kl_estimator", "k2"], ["kl_estimator", "k2"]),
    "temperature 0": (["--reward_funcs", "[spanish]", "--temperature", "0"], ["temperature must be > 0"]),
    "longer than the context": (["--reward_funcs", "[spanish]", "--response_length", "600"], ["600", "512 positions"]),
    "4-bit": (["--reward_funcs", "[spanish]", "--use_peft", "--load_in_4bit"], ["4/8 bit"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_values_are_refused_before_any_work(name, tmp_path, capsys, base_model, prompts):
    extra, needles = BAD[name]
    out = tmp_path / "runs" / "out"
    refused(capsys, ppo(out, base_model, prompts, "--max_steps", "1", *extra), out, needles)


def test_bad_inputs_are_refused_before_any_work(tmp_path, capsys, base_model, prompts, reward_run):
    out = tmp_path / "runs" / "out"
    # the policy is an adapter whose base is gone
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    cfg = {"base_model_name_or_path": str(tmp_path / "gone" / "base"), "peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}
    (orphan / "adapter_config.json").write_text(json.dumps(cfg))
    refused(capsys, ppo(out, orphan, prompts, "--reward_funcs", "[spanish]"), out, ["base model of adapter", "gone"])
    # prompts without a 'prompt' column
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "Hola."}, {"text": "Adiós."}])
    refused(capsys, ppo(out, base_model, texts, "--reward_funcs", "[spanish]"), out, ["'prompt'", "text"])
    # math_accuracy needs an 'answer' column: found at validation, not at step 1
    no_answer = write_jsonl(tmp_path / "no_answer.jsonl", [{"prompt": f"¿{i} más {i}?"} for i in range(20)])
    refused(capsys, ppo(out, base_model, no_answer, "--reward_funcs", "[math_accuracy]"), out, ["answer"])
    # a causal LM given as reward model
    refused(capsys, ppo(out, base_model, prompts, "--reward_model_path", base_model), out, ["is not a reward model", "num_labels"])
    # a value model that is not there
    refused(capsys, ppo(out, base_model, prompts, "--reward_funcs", "[spanish]", "--value_model_path", tmp_path / "missing"),
            out, ["not found"])
    # an unknown key
    refused(capsys, ppo(out, base_model, prompts, "--reward_funcs", "[spanish]", "--kl_cof", "0.1"), out, ["kl_cof", "kl_coef"])


# --------------------------------------------------------------------------- processes, resume, recipe

def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_two_processes_under_accelerate(tmp_path, base_model, prompts):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes/accelerate/cpu_ddp.yaml"),
           "--num_processes", "2", "--num_cpu_threads_per_process", "1", "-m", "llmkit",
           *[str(a) for a in ppo(out, base_model, prompts, "--reward_funcs", "[spanish]", "--max_steps", "2",
                                 "--per_device_train_batch_size", "4", "--num_mini_batches", "2")]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    m = manifest(out)
    assert m["steps"] == 2 and m["metrics"]["episodes"] == 2 * 4 * 2  # each process rolls out its own 4 prompts
    rows = metrics(out)
    assert [x["step"] for x in rows] == [1, 2] and rows[-1]["episode"] == 16
    assert r.stdout.count("llmkit ppo: done") == 1  # only the main process reports and writes
    assert (out / "value_model" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cache") == ["ddp"]  # .cache: llmkit's key lists


RESUME_SCRIPT = """
import sys, time
import llmkit.rewards as R

def slow_spanish(prompts=None, completions=None, **kwargs):
    time.sleep(0.3)  # room to kill the run between two checkpoints
    return R.spanish_reward(prompts, completions, **kwargs)

R.REWARDS["slow_spanish"] = slow_spanish
from llmkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, base_model, prompts):
    """SIGKILL after the first checkpoint; the same command resumes there and ends exactly
    where an uninterrupted run ends (weights, optimizer, KL coefficient and RNG restored)."""
    script = tmp_path / "run_ppo.py"
    script.write_text(RESUME_SCRIPT)

    def cmd(out):
        return [sys.executable, str(script), *[str(a) for a in ppo(out, base_model, prompts,
                                                                 "--reward_funcs", "[slow_spanish]", "--max_steps", "8",
                                                                 "--save_strategy", "steps", "--save_steps", "2", "--eval_split_size", "0",
                                                                 "--adaptive_kl", "true", "--kl_horizon", "100")]]

    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=tmp_path)
    marker = tmp_path / "killed.partial" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not out.exists()
    r = subprocess.run(cmd(out), capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "llmkit: resuming from" in r.stdout and "checkpoint-" in r.stdout
    assert manifest(out)["steps"] == 8 and not (tmp_path / "killed.partial").exists()
    resumed = metrics(out)
    assert [x["step"] for x in resumed] == list(range(1, 9))

    whole = tmp_path / "whole"
    r = subprocess.run(cmd(whole), capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for a, b in zip(resumed, metrics(whole)):
        for k in ("reward/mean", "objective/kl", "loss/policy_avg", "kl_coef", "lr"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], k)
    assert resumed[-1]["kl_coef"] != resumed[0]["kl_coef"]  # the adaptive coefficient moved and was restored


def test_tiny_es_recipe_runs_one_step(tmp_path, adapter_run, reward_run):
    """The shipped recipe, with only the policy, reward model, output and sizes replaced."""
    recipe = REPO / "recipes/tiny-es/ppo.yaml"
    cfg = yaml.safe_load(recipe.read_text())
    assert cfg["model_name_or_path"] == "runs/tiny-es/sft" and cfg["datasets"] == ["data/math_train.jsonl"]
    assert cfg["reward_model_path"] == "runs/tiny-es/reward"
    out = tmp_path / "recipe"
    rc = llmkit("ppo", "--config", recipe, "--output_dir", out, "--model_name_or_path", adapter_run, "--reward_model_path", reward_run,
                "--datasets", f"[{REPO / 'data/math_train.jsonl'}]", "--eval_datasets", f"[{REPO / 'data/math_test.jsonl'}]",
                "--max_eval_prompts", "4", "--max_steps", "1", "--response_length", "8", "--per_device_train_batch_size", "4",
                "--num_ppo_epochs", "1", "--sample_prompts", "1")
    assert rc == 0
    m = manifest(out)
    assert m["steps"] == 1 and m["metrics"]["reward_sources"] == ["model", *cfg["reward_funcs"]]


def test_sigterm_ends_the_step_saves_and_exits_143(tmp_path, base_model, prompts):
    script = tmp_path / "run_ppo.py"
    script.write_text(RESUME_SCRIPT)
    out = tmp_path / "term"
    cmd = [sys.executable, str(script), *[str(a) for a in ppo(out, base_model, prompts,
                                                            "--reward_funcs", "[slow_spanish]", "--max_steps", "50",
                                                            "--save_strategy", "no", "--eval_split_size", "0")]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path)
    metrics_file = tmp_path / "term.partial" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics_file.exists() and metrics_file.read_text().strip()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, output[-3000:]
    assert "SIGTERM received" in output and "llmkit: error: stopped by SIGTERM" in output and "Traceback" not in output
    ckpts = sorted((tmp_path / "term.partial" / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    assert len(ckpts) == 1 and not out.exists()  # saved although save_strategy is 'no'
    step = json.loads(ckpts[0].read_text())["global_step"]
    assert [r["step"] for r in read_jsonl(metrics_file)] == list(range(1, step + 1))
