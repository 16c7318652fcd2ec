"""The obvious config mistakes are reported before llmkit imports torch, TRL or vLLM."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
from conftest import REPO

from llmkit import cli
from llmkit.config import stage_fields

HEAVY = ("torch", "trl", "transformers", "vllm", "lm_eval", "datasets", "peft")
PROBE = f"""
import json, sys
from llmkit.cli import main
rc = main(sys.argv[1:])
print(json.dumps({{"rc": rc, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def probe(tmp_path, *argv: str, cache=None) -> tuple[dict, str]:
    import os

    env = {**os.environ, "LLMKIT_CACHE_DIR": str(cache or tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True, cwd=REPO)
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


@pytest.mark.parametrize("case", ["missing", "yaml", "override"])
def test_obvious_errors_before_any_heavy_import(tmp_path, case):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: [1\n")
    argv = {"missing": ["sft", "--config", str(tmp_path / "nope.yaml")],
            "yaml": ["dpo", "--config", str(bad)],
            "override": ["grpo", "--config", "recipes/tiny-es/grpo.yaml", "stray"]}[case]
    out, err = probe(tmp_path, *argv)
    assert out["rc"] == 2 and err.startswith("llmkit: error: ")
    assert {"missing": "config file not found", "yaml": "YAML syntax error at line", "override": "unexpected argument"}[case] in err
    assert out["heavy"] == []


def test_unknown_key_before_heavy_imports_once_the_key_list_is_cached(tmp_path):
    argv = ["sft", "--config", "recipes/tiny-es/sft.yaml", "--lerning_rate", "1"]
    cold, cold_err = probe(tmp_path, *argv)  # first time: TRL is imported and the key list is written
    assert cold["rc"] == 2 and "trl" in cold["heavy"]
    assert len(list((tmp_path / "cache" / "keys").glob("sft-*.json"))) == 1
    warm, warm_err = probe(tmp_path, *argv)
    assert warm["rc"] == 2 and warm["heavy"] == []
    assert warm_err == cold_err  # the same message, with the same suggestions
    assert "unknown key 'lerning_rate'. Did you mean: learning_rate" in warm_err
    bad_yaml_key = tmp_path / "typo.yaml"
    bad_yaml_key.write_text("model_name_or_path: x\nlora_rank: 8\n")
    warm, err = probe(tmp_path, "sft", "--config", str(bad_yaml_key))
    assert warm["heavy"] == [] and f"{bad_yaml_key}: unknown key 'lora_rank'" in err


@pytest.mark.parametrize("stage", list(cli.STAGES))
def test_cached_key_list_is_the_live_classes(tmp_path, monkeypatch, stage):
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path))
    mod = importlib.import_module(cli.STAGES[stage])
    assert cli.cached_stage_keys(stage) is None
    cli.save_stage_keys(stage, mod)
    assert cli.cached_stage_keys(stage) == sorted(stage_fields(mod.CLASSES))
    # a list written under other library versions is never used
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.0" if name == "trl" else real(name))
    assert cli.cached_stage_keys(stage) is None
