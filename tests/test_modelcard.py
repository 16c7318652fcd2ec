"""The model card (llmkit/modelcard.py) and `llmkit export --format merged`."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import llmkit

from llmkit.config import LlmkitError


def _fake_eval(run, tasks: dict) -> None:
    """What `llmkit eval RUN` leaves in its default output dir (<parent>/eval/<name>/results.json)."""
    out = run.parent / "eval" / run.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"tasks": tasks}))


def test_model_card_metadata_summary_and_eval_results(lora_runs, tmp_path):
    from llmkit.modelcard import build_model_card

    run = tmp_path / "recipe" / "sft"
    shutil.copytree(lora_runs["sft"], run)
    card = build_model_card(run)
    assert card.data.language == "es" and card.data.pipeline_tag == "text-generation" and card.data.library_name == "peft"
    assert card.data.base_model is None  # a local path is not a hub id: named in the text instead
    assert {"llmkit", "sft", "lora"} <= set(card.data.tags)
    assert card.data.eval_results is None
    manifest = json.loads((run / "manifest.json").read_text())
    assert "## How it was trained" in card.text and "vllm_base" in card.text
    assert f"| train_loss |  | {manifest['metrics']['train_loss']:.4g} |" in card.text
    assert "train.jsonl` (400 rows)" in card.text
    _fake_eval(run, {"es_math": {"primary": "exact_match", "metrics": {"exact_match": {"value": 0.25, "stderr": 0.04}}},
                     "es_beto": {"primary": "acc", "metrics": {"acc": {"value": 0.5, "stderr": None}}}})
    card = build_model_card(run)
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == {("es_math", "exact_match"): 0.25, ("es_beto", "acc"): 0.5}
    meta = card.data.to_dict()
    assert meta["model-index"][0]["name"] == "sft" and len(meta["model-index"][0]["results"]) == 2
    assert "| es_math | exact_match | 0.25 | 0.04 |" in card.text


def test_model_card_of_a_hub_base_names_it(lora_runs, tmp_path):
    from llmkit.modelcard import build_model_card

    manifest = json.loads((lora_runs["sft"] / "manifest.json").read_text())
    manifest["lineage"] = [{"path": "Qwen/Qwen2.5-0.5B-Instruct", "stage": None, "weights": "full"},
                           {"path": str(lora_runs["sft"]), "stage": "sft", "weights": "lora"}]
    manifest["inputs"]["datasets"] = [{"path": "somosnlp/some-data", "rows": 10}, {"path": "/local/file.jsonl"}]
    card = build_model_card(lora_runs["sft"], manifest=manifest)
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and card.data.datasets == ["somosnlp/some-data"]
    assert card.data.license == "other"  # a hub base: its licence, which llmkit does not know


@pytest.mark.slow
def test_export_merged_is_the_run_as_a_standalone_model_with_its_card(lora_runs, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmkit.modeling import adapter_base

    run, out = lora_runs["sft"], tmp_path / "merged"
    assert llmkit("export", run, "--format", "merged", "--dtype", "float32", "--output_dir", out) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    readme = (out / "README.md").read_text()
    assert "library_name: transformers" in readme and "merged" in readme and "More Information Needed" not in readme
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter_base(str(run))), str(run))(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    with pytest.raises(LlmkitError, match="already holds a finished"):
        llmkit_export_again(run, out)


def llmkit_export_again(run, out):
    from llmkit.export import ExportArgs, export

    export(ExportArgs(run=str(run), format="merged", output_dir=str(out)))


def test_a_training_stage_writes_its_model_card(lora_runs):
    """finish_training_stage writes README.md (not PEFT's empty template) before the run is moved into place."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(lora_runs["sft"] / "README.md")
    assert card.data.language == "es" and card.data.library_name == "peft" and "lora" in card.data.tags
    assert "More Information Needed" not in card.text and "How it was trained" in card.text
    assert f"llmkit sft --config {lora_runs['sft']}/config.yaml" in card.text
