"""End-to-end tests of the reward, dpo and grpo stages on CPU with the tiny model, their bad
input, and the real GPU recipes run for one step on a tiny stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, llmkit, write_jsonl


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def pair(a: int, b: int, conversational: bool = True) -> dict:
    q, good, bad = f"¿Cuánto es {a} más {b}?", f"La respuesta es {a + b}.", f"The answer is {a + b}."
    if conversational:
        return {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}]}
    return {"prompt": q + " ", "chosen": good, "rejected": bad}


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> tuple[Path, Path]:
    """A separable toy preference set: Spanish answers preferred over English ones."""
    d = tmp_path_factory.mktemp("prefs")
    rows = [pair(a, b) for a in range(12) for b in range(12)]
    return write_jsonl(d / "train.jsonl", rows[:128]), write_jsonl(d / "held.jsonl", rows[128:])


@pytest.fixture(scope="module")
def math_prompts(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("math")
    rows = [{"prompt": [{"role": "user", "content": f"¿Cuánto es {a} más {b}? Termina con «La respuesta es N»."}], "answer": str(a + b)}
            for a in range(10) for b in range(10)]
    return write_jsonl(d / "train.jsonl", rows[:90]), write_jsonl(d / "test.jsonl", rows[90:])


def test_reward_model_beats_chance_on_separable_pairs(tmp_path, base_model, prefs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmkit.stages.reward import pair_texts, score

    out = tmp_path / "rm"
    rc = llmkit("reward", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{prefs[0]}]",
                "--eval_datasets", f"[{prefs[1]}]", "--max_steps", "30", "--per_device_train_batch_size", "8",
                "--learning_rate", "2e-3", "--logging_steps", "5", "--eval_steps", "15", "--max_length", "64")
    assert rc == 0
    m = manifest(out)["metrics"]
    assert m["pairwise_accuracy"] >= 0.9 and m["margin"] > 0
    assert m["pairwise_accuracy"] > m["pairwise_accuracy_before"]
    # the same pairs before and after: the net gain is fixed - broken, and a gain this big is beyond noise
    gain = round((m["pairwise_accuracy"] - m["pairwise_accuracy_before"]) * m["eval_pairs"])
    assert m["paired_fixed"] - m["paired_broken"] == gain and m["paired_p"] < 0.05
    # saved as a full sequence-classification model that later stages load directly
    tok = AutoTokenizer.from_pretrained(out)
    rm = AutoModelForSequenceClassification.from_pretrained(out)
    assert rm.config.num_labels == 1
    c, r = pair_texts(tok, pair(3, 4))
    sc, sr = score(rm, tok, [c, r])
    assert sc > sr


def test_reward_with_lora_on_an_sft_adapter_run(tmp_path, base_model, prefs, sft_data):
    sft = tmp_path / "sft"
    assert llmkit("sft", "--output_dir", sft, "--model_name_or_path", base_model, "--datasets", f"[{sft_data[0]}]",
                  "--eval_split_size", "0", "--use_peft", "--max_steps", "2", "--sample_prompts", "0", "--max_length", "64") == 0
    out = tmp_path / "rm"
    rc = llmkit("reward", "--output_dir", out, "--model_name_or_path", sft, "--datasets", f"[{prefs[0]}]",
                "--eval_datasets", f"[{prefs[1]}]", "--use_peft", "--lora_r", "8", "--max_steps", "4", "--max_length", "64")
    assert rc == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()  # merged for PPO/GRPO
    assert manifest(out)["metrics"]["mode"] == "lora"


@pytest.mark.parametrize("extra", [["--use_peft", "--lora_r", "8"], ["--loss_type", "ipo", "--beta", "0.1"]],
                         ids=["lora-sigmoid", "full-ipo"])
def test_dpo_grows_the_implicit_reward_margin(tmp_path, base_model, prefs, extra):
    out = tmp_path / "dpo"
    rc = llmkit("dpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{prefs[0]}]",
                "--eval_datasets", f"[{prefs[1]}]", "--max_steps", "20", "--per_device_train_batch_size", "8",
                "--learning_rate", "5e-3" if "--use_peft" in extra else "1e-3", "--max_length", "64", "--logging_steps", "5", *extra)
    assert rc == 0
    m = manifest(out)["metrics"]
    assert m["implicit_reward_margin"] > 0.1
    assert m["implicit_reward_accuracy"] >= 0.8
    assert m["preference_accuracy"] >= m["preference_accuracy_before"]
    gain = round((m["preference_accuracy"] - m["preference_accuracy_before"]) * m["eval_pairs"])
    assert m["paired_fixed"] - m["paired_broken"] == gain  # the same pairs, compared one by one
    assert manifest(out)["layout"]["batches"] == "padding-free" and m["padding_random"] > 0  # the DPO default
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    margins = [r["rewards/margins"] for r in logged if "rewards/margins" in r and "eval_loss" not in r]
    assert margins[-1] > margins[0]
    assert (out / "loss.png").is_file()


def test_dpo_reference_is_the_sft_run_not_the_config_name(tmp_path, base_model, prefs):
    """A config-built model has no _name_or_path; the reference must come from the SFT path."""
    out = tmp_path / "dpo"
    assert llmkit("dpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{prefs[0]}]",
                  "--eval_split_size", "0", "--max_steps", "2", "--max_length", "64") == 0
    assert manifest(out)["inputs"]["reference"] == str(base_model)


def test_grpo_scores_every_completion_and_changes_the_policy(tmp_path, base_model, math_prompts, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmkit.rewards as rewards

    seen: list[int] = []

    def counting_reward(prompts=None, completions=None, **kwargs):
        seen.append(len(completions))
        assert len(prompts) == len(completions) == len(kwargs["answer"])
        return [float(len(rewards.completion_text(c))) / 100 for c in completions]

    monkeypatch.setitem(rewards.REWARDS, "counting", counting_reward)
    out = tmp_path / "grpo"
    rc = llmkit("grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts[0]}]",
                "--eval_datasets", f"[{math_prompts[1]}]", "--reward_funcs", "[counting, math_accuracy, format]",
                "--use_peft", "--lora_r", "8", "--num_generations", "4", "--per_device_train_batch_size", "8",
                "--max_completion_length", "8", "--max_steps", "3", "--learning_rate", "1e-2", "--logging_steps", "1",
                "--eval_max_new_tokens", "8", "--beta", "0.04", "--eval_samples", "2", "--temperature", "1.5")
    assert rc == 0
    # 3 steps x 8 completions (2 prompts x 4 generations), plus the one-row check before training
    assert seen[0] == 1 and sum(seen[1:]) >= 3 * 8 and all(n == 8 for n in seen[1:] if n != 10)
    m = manifest(out)["metrics"]
    assert {"eval_math_accuracy_reward", "eval_format_reward", "eval_math_accuracy_reward_before"} <= set(m)
    gain = round((m["eval_math_accuracy_reward"] - m["eval_math_accuracy_reward_before"]) * m["eval_prompts"])
    assert m["paired_fixed"] - m["paired_broken"] == gain and 0 <= m["paired_p"] <= 1
    # 2 sampled answers per held-out prompt before and after, their per-prompt means sign-tested
    assert m["eval_samples"] == 2 and 0 <= m["eval_sampled_accuracy_before"] <= 1 and 0 <= m["eval_sampled_accuracy"] <= 1
    assert m["eval_sampled_accuracy_paired_higher"] + m["eval_sampled_accuracy_paired_lower"] <= m["eval_prompts"]
    assert [r["label"] for r in manifest(out)["summary"]][:2] == ["answer accuracy", "sampled answer accuracy"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/counting_reward/mean" in r for r in logged if "reward" in r)
    assert any("kl" in r for r in logged)
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_model)
    ids = tok("¿Cuánto es 2 más 2?", return_tensors="pt")
    with torch.no_grad():
        before = base(**ids).logits
        after = PeftModel.from_pretrained(base, out)(**ids).logits
    assert not torch.allclose(before, after, atol=1e-5)


def test_grpo_sampled_scores_are_per_prompt_means_of_seeded_draws_that_leave_training_rng_alone(base_model, math_prompts):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.stages.grpo import sampled_scores

    model, tok = AutoModelForCausalLM.from_pretrained(base_model).eval(), AutoTokenizer.from_pretrained(base_model)
    rows = [json.loads(line) for line in math_prompts[1].read_text().splitlines()]
    calls = []

    def odd_length(prompts=None, completions=None, **kwargs):  # a reward that varies from sample to sample
        calls.append((len(completions), kwargs["answer"]))
        return [float(len(c[0]["content"]) % 2) for c in completions]

    how = SimpleNamespace(temperature=1.5, top_p=1.0, top_k=0, min_p=None, seed=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = sampled_scores(model, tok, rows, [odd_length], how, 4, 8)
    assert torch.equal(torch.get_rng_state(), state)  # training's random state is untouched
    assert calls[0] == (4 * len(rows), [r["answer"] for r in rows for _ in range(4)])  # 4 per prompt, in order
    assert len(first) == len(rows) and all(4 * s == int(4 * s) for s in first)  # means of 4 scores in {0, 1}
    assert 0 < sum(first) < len(rows)
    assert sampled_scores(model, tok, rows, [odd_length], how, 4, 8) == first  # same seed, same draws
    assert sampled_scores(model, tok, rows, [odd_length], SimpleNamespace(**{**vars(how), "seed": 4}), 4, 8) != first


def test_grpo_held_out_scores_without_reward_functions(base_model, math_prompts):
    """A GRPO run whose only reward is a reward-stage model has no function to score held-out
    answers with: the greedy evaluation returns no means (it used to fail on funcs[0])."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.stages.grpo import evaluate

    model, tok = AutoModelForCausalLM.from_pretrained(base_model).eval(), AutoTokenizer.from_pretrained(base_model)
    rows = [json.loads(line) for line in math_prompts[1].read_text().splitlines()][:3]
    scores: list = []
    assert evaluate(model, tok, rows, [], 4, item_scores=scores) == {} and scores == []


def test_grpo_full_from_an_adapter_run_uses_the_merged_sft_as_reference(tmp_path, base_model, math_prompts, sft_data):
    sft = tmp_path / "sft"
    assert llmkit("sft", "--output_dir", sft, "--model_name_or_path", base_model, "--datasets", f"[{sft_data[0]}]",
                  "--eval_split_size", "0", "--use_peft", "--max_steps", "2", "--sample_prompts", "0", "--max_length", "64") == 0
    out = tmp_path / "grpo"
    rc = llmkit("grpo", "--output_dir", out, "--model_name_or_path", sft, "--datasets", f"[{math_prompts[0]}]",
                "--eval_split_size", "0", "--num_generations", "2", "--per_device_train_batch_size", "4",
                "--max_completion_length", "6", "--max_steps", "2", "--beta", "0.1", "--reward_funcs", "[format]")
    assert rc == 0
    assert (out / "model.safetensors").is_file() and not (out / "reference_model").exists()


# --------------------------------------------------------------------------- bad input

def _refused(capsys, out: Path, *argv, expect: str) -> None:
    capsys.readouterr()
    assert llmkit(*argv) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err, err
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_rl_bad_input(tmp_path, capsys, base_model, prefs, math_prompts):
    out = tmp_path / "out"
    no_pairs = write_jsonl(tmp_path / "nopairs.jsonl", [{"prompt": "hola", "answer": "adiós"}])
    _refused(capsys, out, "dpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{no_pairs}]",
             expect="'chosen' and 'rejected'")
    _refused(capsys, out, "reward", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{no_pairs}]",
             expect="'chosen' and 'rejected'")
    empty = write_jsonl(tmp_path / "empty.jsonl", [pair(1, 2), {**pair(2, 3), "chosen": [{"role": "assistant", "content": "  "}]}])
    _refused(capsys, out, "dpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{empty}]",
             expect="line 2")
    _refused(capsys, out, "grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts[0]}]",
             "--reward_funcs", "[math_acuracy]", expect="math_accuracy")
    _refused(capsys, out, "grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts[0]}]",
             "--num_generations", "3", "--per_device_train_batch_size", "8", expect="num_generations")
    no_answer = write_jsonl(tmp_path / "noanswer.jsonl", [{"prompt": "¿Cuánto es 2 más 2?"}])
    _refused(capsys, out, "grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{no_answer}]",
             "--num_generations", "2", "--per_device_train_batch_size", "2", expect="answer")
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"), "peft_type": "LORA"}))
    _refused(capsys, out, "dpo", "--output_dir", out, "--model_name_or_path", orphan, "--datasets", f"[{prefs[0]}]",
             expect="gone")
    _refused(capsys, out, "grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts[0]}]",
             "--num_generations", "2", "--per_device_train_batch_size", "2", "--reward_model_path", tmp_path / "no_rm",
             expect="no_rm")
    _refused(capsys, out, "grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts[0]}]",
             "--num_generations", "2", "--per_device_train_batch_size", "2", "--reward_funcs", "[]", expect="reward")
    _refused(capsys, out, "dpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{prefs[0]}]",
             "--beta", "-1", expect="beta")
    _refused(capsys, out, "dpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{prefs[0]}]",
             "--eval_limit", "-5", expect="eval_limit must be 0")
    _refused(capsys, out, "grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts[0]}]",
             "--num_generations", "2", "--per_device_train_batch_size", "2", "--eval_samples", "-1", expect="eval_samples must be 0")
    if not torch.cuda.is_available():
        _refused(capsys, out, "grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts[0]}]",
                 "--num_generations", "2", "--per_device_train_batch_size", "2", "--use_vllm", "true", expect="use_vllm: false")


# --------------------------------------------------------------------------- GPU recipes on a tiny stand-in

STAND_IN = ["--dtype", "float32", "--attn_implementation", "eager", "--bf16", "false", "--gradient_checkpointing", "false",
            "--max_steps", "1", "--gradient_accumulation_steps", "1"]


@pytest.mark.parametrize("name", ["reward.yaml", "dpo.yaml"])
def test_gpu_preference_recipes_run_one_step(tmp_path, base_model, prefs, name):
    out = tmp_path / name.replace(".yaml", "")
    rc = llmkit(name.replace(".yaml", ""), "--config", REPO / "recipes/qwen2.5-0.5b-es" / name, "--output_dir", out,
                "--model_name_or_path", base_model, "--datasets", f"[{prefs[0]}]", "--eval_datasets", f"[{prefs[1]}]",
                "--per_device_train_batch_size", "2", "--max_length", "64", *STAND_IN)
    assert rc == 0 and manifest(out)["steps"] == 1


def test_gpu_grpo_recipe_runs_one_step(tmp_path, base_model):
    rows = [{"question": f"Ana tiene {a} manzanas y compra {a} más. ¿Cuántas tiene?", "answer": f"{a} + {a} = {2 * a}\n#### {2 * a}"}
            for a in range(1, 9)]
    data = write_jsonl(tmp_path / "gsm.jsonl", rows)
    out = tmp_path / "grpo"
    rc = llmkit("grpo", "--config", REPO / "recipes/qwen2.5-0.5b-es/grpo.yaml", "--output_dir", out, "--model_name_or_path", base_model,
                "--datasets", json.dumps([{"path": str(data), "format": "gsm8k"}]), "--eval_split_size", "2", "--eval_limit", "2",
                "--eval_max_new_tokens", "4", "--use_vllm", "false", "--num_generations", "2", "--per_device_train_batch_size", "2",
                "--max_completion_length", "4", *STAND_IN)
    assert rc == 0 and manifest(out)["steps"] == 1


def test_grpo_with_a_reward_model_as_one_more_reward(tmp_path, base_model, math_prompts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_dir = tmp_path / "rm"
    rm = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1)
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(rm_dir)
    out = tmp_path / "grpo"
    rc = llmkit("grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts[0]}]",
                "--eval_split_size", "0", "--reward_funcs", "[format]", "--reward_model_path", rm_dir, "--use_peft",
                "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "6",
                "--max_steps", "2", "--logging_steps", "1")
    assert rc == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rm_keys = [k for r in logged for k in r if k.startswith("rewards/") and "format" not in k]
    assert rm_keys, "the reward model's scores are logged as a reward of their own"
    assert manifest(out)["inputs"]["reward_model"] == str(rm_dir)


def test_gpu_ppo_recipe_runs_one_step(tmp_path, base_model, math_prompts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_dir = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1).save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(rm_dir)
    out = tmp_path / "ppo"
    rc = llmkit("ppo", "--config", REPO / "recipes/qwen2.5-0.5b-es/ppo.yaml", "--output_dir", out, "--model_name_or_path", base_model,
                "--reward_model_path", rm_dir, "--datasets", f"[{math_prompts[0]}]", "--eval_datasets", f"[{math_prompts[1]}]",
                "--max_eval_prompts", "2", "--response_length", "4", "--per_device_train_batch_size", "4", "--num_mini_batches", "2",
                "--dtype", "float32", "--attn_implementation", "eager", "--bf16", "false", "--max_steps", "1")
    assert rc == 0 and manifest(out)["steps"] == 1


def test_grpo_toy_task_reward_rises(tmp_path, peaked_policy, math_prompts, monkeypatch):
    """The same toy task as PPO's: score = share of completion tokens containing 'a'. Within a
    group, completions with more 'a' tokens get positive advantages, so the mean score rises."""
    from conftest import frac_a_reward

    import llmkit.rewards as rewards

    monkeypatch.setitem(rewards.REWARDS, "frac_a", frac_a_reward(peaked_policy))
    out = tmp_path / "toy"
    rc = llmkit("grpo", "--output_dir", out, "--model_name_or_path", peaked_policy, "--datasets", f"[{math_prompts[0]}]",
                "--eval_datasets", f"[{math_prompts[1]}]", "--eval_max_new_tokens", "8", "--reward_funcs", "[frac_a]",
                "--num_generations", "8", "--per_device_train_batch_size", "16", "--max_completion_length", "8",
                "--temperature", "1.0", "--max_steps", "30", "--learning_rate", "3e-4", "--beta", "0.0", "--logging_steps", "1")
    assert rc == 0
    reward = [r["reward"] for r in (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()) if "reward" in r]
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    assert last > first + 0.2, reward
    m = manifest(out)["metrics"]
    assert m["eval_frac_a"] > m["eval_frac_a_before"]
