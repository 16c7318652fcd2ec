"""`llmkit push RUN --repo_id ORG/NAME [--private]` against the hub stand-in (tests/hub_standin.py,
reached through HF_ENDPOINT): one commit with the run's files and its model card; bad input refused."""

from __future__ import annotations

import json

import pytest
from conftest import llmkit

from llmkit.config import LlmkitError


@pytest.fixture()
def online(hub_standin, monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_ENDPOINT", hub_standin.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no token saved by `hf auth login`
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub_standin


def test_push_uploads_the_run_and_its_model_card(online, lora_runs, monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    run = lora_runs["sft"]
    assert llmkit("push", run, "--repo_id", "llmkit-test/tiny-sft", "--private") == 0
    repo = online.repos[("model", "llmkit-test/tiny-sft")]
    assert repo.private
    files = repo.revisions["main"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "manifest.json", "README.md"):
        assert name in files
    assert not any(p.startswith("checkpoints/") for p in files) and "training_args.bin" not in files
    assert files["adapter_model.safetensors"] == (run / "adapter_model.safetensors").read_bytes()
    assert [c[0] for c in online.commits].count("llmkit-test/tiny-sft") == 1  # one commit
    # the uploaded README is the model card (its metadata passed the stand-in's validate-yaml)
    api = HfApi(endpoint=online.url, token="hf_standin_token")
    assert api.repo_info("llmkit-test/tiny-sft").private is True
    card = ModelCard(files["README.md"].decode())
    assert card.data.language == "es" and card.data.pipeline_tag == "text-generation"
    assert "sft" in card.data.tags and "lora" in card.data.tags
    assert "More Information Needed" not in card.text and "How it was trained" in card.text
    manifest = json.loads(files["manifest.json"])
    assert manifest["stage"] == "sft"


def test_push_refuses_without_a_token_or_with_a_bad_repo_id(online, lora_runs, tmp_path):
    from llmkit.export import push

    before = len(online.commits)
    with pytest.raises(LlmkitError, match="push needs a Hugging Face token"):
        push(str(lora_runs["sft"]), "llmkit-test/nope")
    with pytest.raises(LlmkitError, match="--repo_id 'nope': expected ORG/NAME"):
        push(str(lora_runs["sft"]), "nope", token="t")
    (tmp_path / "half.partial").mkdir()
    with pytest.raises(LlmkitError, match="did not finish"):
        push(str(tmp_path / "half"), "llmkit-test/nope", token="t")
    assert ("model", "llmkit-test/nope") not in online.repos and len(online.commits) == before


def test_push_offline_is_refused(lora_runs, monkeypatch):
    from llmkit.export import push

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LlmkitError, match="HF_HUB_OFFLINE is set"):
        push(str(lora_runs["sft"]), "llmkit-test/x", token="t")
