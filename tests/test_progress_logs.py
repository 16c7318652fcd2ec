"""Progress bars of llmkit's long steps, batched DPO scoring, and quiet third-party logs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import DATA, REPO, read_jsonl

from llmkit import progress


@pytest.fixture(scope="module")
def model_and_tok(base_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(base_model).eval(), AutoTokenizer.from_pretrained(base_model)


def _one_at_a_time(model, tokenizer, prompts, completions):
    """The former unbatched scoring, kept here as the reference."""
    out = []
    for p, c in zip(prompts, completions):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(p_ids) - 1 : -1].float()
        out.append(torch.log_softmax(logits, -1).gather(-1, ids[0, len(p_ids):, None]).sum().item())
    return out


def test_batched_completion_logps_equal_one_at_a_time(model_and_tok):
    from llmkit.stages.dpo import completion_logps, split_pair

    model, tok = model_and_tok
    rows = read_jsonl(DATA / "preferences_heldout.jsonl", 21)  # 21: the last batch is a partial one
    p, c, r = (list(x) for x in zip(*(split_pair(tok, row) for row in rows)))
    lengths = {len(tok(x + y, add_special_tokens=False)["input_ids"]) for x, y in zip(p, c + r)}
    assert len(lengths) > 3  # the batches really are padded
    for completions in (c, r):
        ref = _one_at_a_time(model, tok, p, completions)
        for bs in (1, 8, 32):
            got = completion_logps(model, tok, p, completions, batch_size=bs)
            assert got == pytest.approx(ref, abs=1e-5, rel=0)


def test_preference_metrics_bar_names_the_step(model_and_tok, capsys, monkeypatch):
    from llmkit.stages.dpo import preference_metrics

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    model, tok = model_and_tok
    rows = read_jsonl(DATA / "preferences_heldout.jsonl", 5)
    m = preference_metrics(model, tok, rows, 0.1, ref=model, desc="llmkit dpo: held-out preference metrics (before)")
    err = capsys.readouterr().err
    assert "llmkit dpo: held-out preference metrics (before)" in err
    assert "20/20" in err  # 4 scored sequences per pair
    assert m["implicit_reward_margin"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    preference_metrics(model, tok, rows, 0.1, ref=model)  # no description: no bar
    assert capsys.readouterr().err == ""


def test_generate_completions_bar_and_non_main_process(model_and_tok, capsys, monkeypatch):
    from llmkit.modeling import generate_completions

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    model, tok = model_and_tok
    prompts = [r["prompt"] for r in read_jsonl(DATA / "math_easy_test.jsonl", 3)]
    a = generate_completions(model, tok, prompts, 4, desc="llmkit sft: greedy samples (after)")
    err = capsys.readouterr().err
    assert "llmkit sft: greedy samples (after)" in err and "3/3" in err
    monkeypatch.setattr(progress, "main_process", lambda: False)
    b = generate_completions(model, tok, prompts, 4, desc="llmkit sft: greedy samples (after)")
    assert capsys.readouterr().err == ""  # one bar per run, from the main process only
    assert a == b
    monkeypatch.undo()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    list(progress.track(range(3), "llmkit x: y"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("rank,main", [("0", True), ("1", False)])
def test_main_process_from_the_launcher_env_without_torch(rank, main):
    code = ("import sys, llmkit.progress as p; print(p.main_process(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env={"RANK": rank, "LOCAL_RANK": rank, "PATH": ""},
                         capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    assert out == [str(main), "False"]


# ---- third-party logs: warnings and errors only, unless --verbose / LLMKIT_LOG_LEVEL

def _env(**extra) -> dict:
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("LLMKIT_LOG_LEVEL", "VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "TQDM_DISABLE")}
    return {**env, **extra}


@pytest.mark.parametrize("verbose", [False, True])
def test_tokenizer_stage_hides_transformers_info_unless_verbose(tmp_path, verbose):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read_jsonl(DATA / "corpus_train.jsonl", 200)))
    cmd = [sys.executable, "-m", "llmkit", "tokenizer", "--output_dir", str(tmp_path / "tok"), "--datasets", f"[{corpus}]",
           "--vocab_size", "300"] + (["--verbose"] if verbose else [])
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "llmkit tokenizer: done" in res.stdout  # llmkit's own lines are always shown
    assert ("tokenizer config file saved" in res.stderr) is verbose  # transformers' INFO line


VLLM_SCRIPT = """
from llmkit.cli import configure_library_logs
configure_library_logs()
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging_if_needed, init_logger
configure_logging_if_needed(LoggingConfig())  # what vLLM's engine (in-process or server) does at start-up
log = init_logger("vllm.llmkit_test")
log.info("info-line-from-vllm")
log.warning("warning-line-from-vllm")
"""


@pytest.mark.parametrize("level", [None, "INFO"])
def test_vllm_info_lines_hidden_by_default(level):
    pytest.importorskip("vllm")
    env = _env(**({"LLMKIT_LOG_LEVEL": level} if level else {}))
    res = subprocess.run([sys.executable, "-c", VLLM_SCRIPT], env=env, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "warning-line-from-vllm" in out
    assert ("info-line-from-vllm" in out) is (level == "INFO")


def test_library_levels_reach_child_processes_and_respect_the_user(monkeypatch):
    import logging

    from llmkit import cli
    from llmkit.config import LlmkitError

    for k in ("LLMKIT_LOG_LEVEL", "VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "LMEVAL_LOG_LEVEL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(cli, "_env_set_by_llmkit", {})
    assert cli.configure_library_logs() == "WARNING"
    import os

    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING" and os.environ["TRANSFORMERS_VERBOSITY"] == "warning"
    assert logging.getLogger("httpx").level == logging.WARNING
    from transformers.utils import logging as hf_logging

    assert hf_logging.get_verbosity() == logging.WARNING
    assert cli.configure_library_logs(verbose=True) == "INFO"  # what llmkit set itself, it may change again
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO" and hf_logging.get_verbosity() == logging.INFO
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # the user's own setting wins
    monkeypatch.setenv("LLMKIT_LOG_LEVEL", "debug")
    assert cli.configure_library_logs() == "DEBUG"
    monkeypatch.setenv("LLMKIT_LOG_LEVEL", "WARNING")
    cli.configure_library_logs()
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    monkeypatch.setenv("LLMKIT_LOG_LEVEL", "loud")
    with pytest.raises(LlmkitError, match="LLMKIT_LOG_LEVEL"):
        cli.configure_library_logs()
    monkeypatch.delenv("LLMKIT_LOG_LEVEL")
    cli.configure_library_logs()  # leave the process as the other tests expect it
    hf_logging.set_verbosity(logging.WARNING)


def test_sampled_completions_come_n_per_prompt_in_prompt_order(model_and_tok):
    """With top_k 1 every sample is the greedy answer, so each prompt's group of n must equal its
    own greedy completion (a wrong grouping of num_return_sequences would mix prompts)."""
    from llmkit.modeling import generate_completions

    model, tok = model_and_tok
    prompts = [r["prompt"] for r in read_jsonl(DATA / "math_easy_test.jsonl", 5)]
    greedy = generate_completions(model, tok, prompts, 6, batch_size=2)
    assert len(set(greedy)) > 1  # the prompts' answers differ, so a mix-up would show
    one = generate_completions(model, tok, prompts, 6, batch_size=2, sampling={"temperature": 1.0, "top_k": 1}, n=3)
    assert one == [g for g in greedy for _ in range(3)]
    torch.manual_seed(0)
    hot = generate_completions(model, tok, prompts, 6, batch_size=2, sampling={"temperature": 5.0, "top_k": None}, n=3)
    assert len(hot) == 15 and hot != one  # really sampled
