"""`llmkit eval --engine auto` and the default batch sizes (issue 17): the rule as a pure function
(llmkit.evaluation.runner.auto_engine), the inputs it is given (parameter count from the
safetensors headers, generation vs log-likelihood examples as lm-eval will score them), the choice
printed at the start and recorded in results.json and the manifest, the timing split (model load
apart from the harness, seconds per request type), and the eval bench's generated data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODEL, llmkit

from llmkit.evaluation import runner
from llmkit.evaluation.runner import EvalArgs, auto_engine, count_examples, default_batch_size
from llmkit.modeling import count_parameters

FIXTURES = REPO / "tests" / "fixtures" / "eval"


@pytest.mark.parametrize("cuda, installed, head, gen, total, want", [
    (False, False, 64, 300, 300, "transformers"),  # no vLLM: always transformers
    (True, False, 64, 300, 300, "transformers"),
    (False, True, 16, 300, 300, "transformers"),  # no CPU attention kernel for head size 16
    (True, True, 16, 0, 1200, "vllm"),  # the head-size limit is vLLM's CPU kernels' only
    (True, True, 64, 0, 5, "vllm"),  # CUDA: vLLM whatever the mix
    (False, True, 64, 0, 1200, "transformers"),  # CPU, log-likelihoods only
    (False, True, 64, 300, 1200, "transformers"),  # CPU, a quarter generated (the bench's zero-shot mix: a tie)
    (False, True, 64, 300, 600, "transformers"),  # CPU, half generated (the bench: a tie)
    (False, True, 64, 899, 1200, "transformers"),  # CPU, just under three quarters generated
    (False, True, 64, 900, 1200, "vllm"),
    (False, True, 64, 99, 99, "transformers"),  # CPU, all generated but too few to win back vLLM's start-up
    (False, True, 64, 100, 100, "vllm"),
    (False, True, None, 300, 300, "vllm"),  # head size unknown (hub id): vLLM says itself if it cannot
    (False, True, 64, 0, 0, "transformers"),
])
def test_auto_rule(cuda, installed, head, gen, total, want):
    engine, reason = auto_engine(cuda, installed, head, 27_353_600, gen, total)
    assert engine == want, reason
    if not installed:
        assert reason == "vLLM is not installed"
    elif not cuda and head == 16:
        assert "head size 16" in reason
    elif not cuda:
        assert reason.startswith("CPU, 27.4M parameters") and f"{gen} of {total} examples are generations" in reason


def test_auto_rule_thresholds_are_the_documented_ones():
    assert (runner.CPU_VLLM_MIN_GEN_SHARE, runner.CPU_VLLM_MIN_GEN_EXAMPLES) == (0.75, 100)
    assert ">= 75 % and >= 100 examples" in EvalArgs.__dataclass_fields__["engine"].metadata["help"]
    assert auto_engine(False, True, 64, None, 0, 10)[1].startswith("CPU, size unknown")


def test_default_batch_sizes():
    assert default_batch_size("vllm", False, 2000) == default_batch_size("vllm", True, None) == "auto"
    assert default_batch_size("server", False, 2000) == 8
    assert default_batch_size("transformers", True, 2000) == 8  # CUDA: unchanged (not measured yet)
    assert default_batch_size("transformers", False, None) == 8  # vocabulary unknown
    assert default_batch_size("transformers", False, 2000) == 32  # the bench's tiny models
    assert default_batch_size("transformers", False, 16384) == 16
    assert default_batch_size("transformers", False, 151_936) == 8  # Qwen-sized vocabulary: as before


def test_count_parameters_reads_the_safetensors_headers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    for tied in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**{**TINY_MODEL, "vocab_size": 300, "tie_word_embeddings": tied}))
        model.save_pretrained(tmp_path / str(tied))
        assert count_parameters(str(tmp_path / str(tied))) == model.num_parameters(), tied
    assert count_parameters("Qwen/Qwen2.5-0.5B") == 0  # a hub id: nothing local to read
    assert count_parameters(str(tmp_path)) == 0  # no safetensors file


def test_count_examples_follows_limit_as_lm_eval_does():
    _, _, _, built = runner.load_tasks(EvalArgs(tasks="copa_es,mgsm_direct_es_spanish_bench", data_dir=str(FIXTURES)))
    n_copa = sum(1 for _ in open(FIXTURES / "copa_es" / "test.jsonl"))
    n_mgsm = sum(1 for _ in open(FIXTURES / "mgsm_direct_es_spanish_bench" / "test.jsonl"))
    assert count_examples(built, None) == (n_mgsm, n_copa + n_mgsm)
    assert count_examples(built, 3) == (3, 6)
    half = -(-n_copa // 2), -(-n_mgsm // 2)  # lm-eval rounds a fraction up
    assert count_examples(built, 0.5) == (half[1], sum(half))


def _stderr_engine_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("llmkit: engine ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_auto_choice_is_printed_and_recorded(tmp_path, vllm_base, capsys):
    """A real evaluation (transformers; few examples, so auto picks it on a CPU or when vLLM is
    missing): the printed reason is auto_engine's, results.json and the manifest carry it; the
    timing counts every request the harness made."""
    from llmkit.serving import has_cuda, vllm_available

    if has_cuda():
        pytest.skip("on CUDA auto picks vLLM")
    out = tmp_path / "auto"
    assert llmkit("eval", vllm_base, "--tasks", "copa_es,mgsm_direct_es_spanish_bench", "--limit", "3", "--engine", "auto",
                  "--data_dir", FIXTURES, "--output_dir", out, "--bootstrap_iters", "0") == 0
    engine, reason = auto_engine(False, vllm_available(), runner._head_dim(str(vllm_base)), count_parameters(str(vllm_base)), 3, 6)
    assert engine == "transformers"
    assert _stderr_engine_line(capsys.readouterr().err) == f"llmkit: engine transformers (auto: {reason})"
    res = json.loads((out / "results.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert res["engine"]["name"] == "transformers" and res["engine"]["chosen_by"] == "auto" and res["engine"]["reason"] == reason
    assert manifest["engine"] == {"name": "transformers", "chosen_by": "auto", "reason": reason}
    vocab = json.loads((Path(vllm_base) / "config.json").read_text())["vocab_size"]
    assert res["settings"]["batch_size"] == default_batch_size("transformers", False, vocab) == 32
    t = res["timing"]
    assert t["startup_s"] >= 0 and t["harness_s"] > 0 and t["harness_cpu_s"] > 0
    assert abs(t["startup_s"] + t["harness_s"] - res["wall_time_s"]) < 0.05
    # copa_es: 3 examples x 2 choices log-likelihoods; mgsm: 3 generations
    assert t["requests"]["loglikelihood"]["requests"] == 6 and t["requests"]["generate_until"]["requests"] == 3
    assert t["requests"]["generate_until"]["s"] > 0 and "loglikelihood_rolling" not in t["requests"]


def test_explicit_engine_and_batch_are_recorded(tmp_path, vllm_base, capsys):
    out = tmp_path / "given"
    assert llmkit("eval", vllm_base, "--tasks", "copa_es", "--limit", "2", "--engine", "transformers", "--batch_size", "4",
                  "--data_dir", FIXTURES, "--output_dir", out, "--bootstrap_iters", "0") == 0
    assert _stderr_engine_line(capsys.readouterr().err) == "llmkit: engine transformers (--engine transformers)"
    res = json.loads((out / "results.json").read_text())
    assert (res["engine"]["chosen_by"], res["engine"]["reason"], res["settings"]["batch_size"]) == ("user", "--engine transformers", 4)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_eval_data_has_the_hub_schema(tmp_path):
    """The eval bench's generated tasks: the columns and types the suite checks, N scored rows,
    both answers used, and lm-eval builds every task from them."""
    from llmkit.evaluation import suite

    bench = _bench()
    root = bench.make_eval_data(tmp_path / "data", 40)
    for task in bench.EVAL_TASKS:
        suite.check_local_schema(task, root)
        scored = suite.TASKS[task].splits[0]
        rows = [json.loads(line) for line in (root / task / f"{scored}.jsonl").read_text().splitlines()]
        assert len(rows) == 40, task
    labels = {json.loads(line)["label"] for line in (root / "copa_es" / "test.jsonl").read_text().splitlines()}
    assert labels == {0, 1}
    first = (root / "belebele_spa_Latn" / "test.jsonl").read_text()
    assert bench.make_eval_data(tmp_path / "data", 40) == root and (root / "belebele_spa_Latn" / "test.jsonl").read_text() == first
    _, _, _, built = runner.load_tasks(EvalArgs(tasks=",".join(bench.EVAL_TASKS), data_dir=str(root)))
    assert count_examples(built, None) == (40, 160)
