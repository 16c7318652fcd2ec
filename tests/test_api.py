"""The Python API (`import llmkit`): the same code paths as the CLI — same run directories and
numbers, the same one-line messages for bad input, raised as LlmkitError instead of an exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, llmkit

import llmkit as api
from llmkit.config import LlmkitError

FIXTURES = REPO / "tests" / "fixtures" / "eval"


def sft_keys(base_model, sft_data, out) -> dict:
    return {"output_dir": str(out), "model_name_or_path": str(base_model), "datasets": [str(sft_data[0])],
            "eval_datasets": [str(sft_data[1])], "max_steps": 3, "max_length": 64, "use_peft": True, "lora_r": 8,
            "learning_rate": 1e-3, "sample_prompts": 2, "sample_max_new_tokens": 8, "logging_steps": 1}


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, base_model, sft_data):
    out = tmp_path_factory.mktemp("api") / "sft"
    return api.train("sft", **sft_keys(base_model, sft_data, out))


def test_train_gives_the_cli_s_run(tmp_path, api_run, base_model, sft_data):
    keys = sft_keys(base_model, sft_data, tmp_path / "cli")
    argv = []
    for k, v in keys.items():
        argv += [f"--{k}", f"[{', '.join(v)}]" if isinstance(v, list) else ("" if v is True else str(v))]
    argv = [a for a in argv if a != ""]
    assert llmkit("sft", *argv) == 0
    cli = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert isinstance(api_run, api.Run) and api_run.stage == "sft"
    import yaml

    def resolved(run):  # every key with its final value, but where it was written
        cfg = yaml.safe_load((run / "config_resolved.yaml").read_text())
        return {k: v for k, v in cfg.items() if "dir" not in k}

    assert resolved(api_run.path) == resolved(tmp_path / "cli")
    for key in ("eval_loss_before", "eval_loss", "train_loss", "sample_format_match"):
        assert api_run.metrics[key] == pytest.approx(cli["metrics"][key], abs=1e-6), key
    assert api_run.summary and api_run.summary[0]["label"] == "held-out answer loss"
    assert [s["path"] for s in api_run.lineage] == [str(base_model), str(api_run.path)]
    assert any("loss" in row for row in api_run.log())
    assert api_run.config["learning_rate"] == 1e-3


def test_run_loads_and_generates_the_trained_model(api_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = api_run.load_model()
    tok = api_run.load_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(api_run.lineage[0]["path"])
    ids = tok("Hola, ¿qué tal?", return_tensors="pt")
    with torch.no_grad():
        mine, ref = model(**ids).logits, PeftModel.from_pretrained(base, api_run.path)(**ids).logits
    assert torch.allclose(mine, ref, atol=1e-5)
    answer = api_run.generate("¿Cuál es la capital de Chile?", max_new_tokens=8)
    assert isinstance(answer, str)
    again = api_run.generate([{"role": "user", "content": "¿Cuál es la capital de Chile?"}], max_new_tokens=8)
    assert again == answer  # greedy, and a string is one user turn through the chat template


def _cli_error(capsys, *argv) -> str:
    capsys.readouterr()
    assert llmkit(*argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("llmkit: error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("llmkit: error: ")


@pytest.mark.parametrize("case", ["unknown key", "bad value", "missing dataset", "finished output"])
def test_bad_input_raises_the_cli_s_message(tmp_path, capsys, api_run, base_model, case):
    keys = {"output_dir": str(tmp_path / "o"), "model_name_or_path": str(base_model), "datasets": [str(REPO / "data/sft_train.jsonl")],
            "max_steps": 1}
    stage = "sft"  # (an unknown stage is argparse's message on the command line: see the next test)
    if case == "unknown key":
        keys["lerning_rate"] = 1e-4
    elif case == "bad value":
        keys["learning_rate"] = -1.0
    elif case == "missing dataset":
        keys["datasets"] = [str(tmp_path / "nope.jsonl")]
    else:
        keys["output_dir"] = str(api_run.path)
    argv = [x for k, v in keys.items() for x in (f"--{k}", f"[{', '.join(v)}]" if isinstance(v, list) else str(v))]
    message = _cli_error(capsys, stage, *argv)
    with pytest.raises(LlmkitError) as err:
        api.train(stage, **keys)
    assert str(err.value) == message
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_unknown_stage_names_the_stages():
    with pytest.raises(LlmkitError, match="unknown stage 'sfft'; stages: tokenizer, pretrain, sft"):
        api.train("sfft")


def test_run_of_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(LlmkitError, match="not found"):
        api.Run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmkitError, match="not a finished llmkit run"):
        api.Run(tmp_path / "empty")


def test_evaluate_returns_the_results(tmp_path, api_run):
    results = api.evaluate(api_run, tasks="copa_es", engine="transformers", data_dir=str(FIXTURES), limit=4,
                           output_dir=tmp_path / "ev", bootstrap_iters=10)
    on_disk = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["tasks"] == on_disk["tasks"] and results["tasks"]["copa_es"]["n"] == 4
    assert results["model"]["lineage"][-1]["path"] == str(api_run.path)
    with pytest.raises(LlmkitError):
        api.evaluate(api_run, tasks="copa_es", nonsense_option=1)


def test_import_is_cheap():
    code = "import sys, llmkit; print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.stdout.strip() == "[]"
