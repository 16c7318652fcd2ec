"""`llmkit run` over a small recipe: stages chain through their run directories, finished
stages are skipped, a changed config is refused until redone with --from, an unfinished stage
resumes, `llmkit ls` reports what has been run; and a stage under `accelerate launch` with two
CPU processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import DATA, REPO, TINY_MODEL, llmkit, read_jsonl, write_jsonl


def make_recipe(root: Path) -> Path:
    data = root / "data"
    write_jsonl(data / "corpus.jsonl", read_jsonl(DATA / "corpus_train.jsonl", 300))
    write_jsonl(data / "held.jsonl", read_jsonl(DATA / "corpus_heldout.jsonl", 60))
    write_jsonl(data / "sft.jsonl", read_jsonl(DATA / "sft_train.jsonl", 120))
    runs = root / "runs"
    recipe = root / "recipe"
    recipe.mkdir()
    configs = {
        "tokenizer": {"output_dir": str(runs / "tok"), "datasets": [str(data / "corpus.jsonl")], "vocab_size": 500},
        "pretrain": {"output_dir": str(runs / "pre"), "tokenizer_name_or_path": str(runs / "tok"), "model_config": TINY_MODEL,
                     "datasets": [str(data / "corpus.jsonl")], "eval_datasets": [str(data / "held.jsonl")], "block_size": 64,
                     "max_steps": 6, "save_steps": 3, "learning_rate": 3e-3},
        "sft": {"output_dir": str(runs / "sft"), "model_name_or_path": str(runs / "pre"), "datasets": [str(data / "sft.jsonl")],
                "eval_split_size": 10, "max_steps": 4, "max_length": 128, "use_peft": True, "assistant_only_loss": True,
                "sample_prompts": 1, "sample_max_new_tokens": 4},
    }
    for name, cfg in configs.items():
        (recipe / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    (recipe / "pipeline.yaml").write_text(yaml.safe_dump({"name": "mini", "description": "test", "stages": list(configs)}))
    return recipe


def finished_at(run: Path) -> str:
    return json.loads((run / "manifest.json").read_text())["finished_at"] + (run / "manifest.json").read_text()


def test_run_chains_skips_and_redoes(tmp_path, capsys):
    recipe = make_recipe(tmp_path)
    runs = tmp_path / "runs"
    assert llmkit("run", recipe) == 0
    for stage in ("tok", "pre", "sft"):
        assert (runs / stage / "manifest.json").is_file()
    assert json.loads((runs / "sft" / "manifest.json").read_text())["inputs"]["model"] == str(runs / "pre")
    before = {s: finished_at(runs / s) for s in ("tok", "pre", "sft")}

    capsys.readouterr()
    assert llmkit("run", recipe) == 0  # everything finished with the same config: skipped
    out = capsys.readouterr().out
    assert out.count("skipping") == 3
    assert {s: finished_at(runs / s) for s in ("tok", "pre", "sft")} == before

    # a changed config is not silently reused, nor silently redone
    cfg = yaml.safe_load((recipe / "pretrain.yaml").read_text())
    cfg["learning_rate"] = 1e-3
    (recipe / "pretrain.yaml").write_text(yaml.safe_dump(cfg))
    assert llmkit("run", recipe) == 2
    assert "--from pretrain" in capsys.readouterr().err
    assert llmkit("run", recipe, "--from", "pretrain") == 0
    after = {s: finished_at(runs / s) for s in ("tok", "pre", "sft")}
    assert after["tok"] == before["tok"]
    assert after["pre"] != before["pre"] and after["sft"] != before["sft"]  # sft consumed the new pretrain

    capsys.readouterr()
    assert llmkit("ls", tmp_path) == 0  # tmp_path is the recipes folder: it holds 'recipe'
    listing = capsys.readouterr().out
    assert "recipe" in listing and "done" in listing


def test_unfinished_stage_resumes_from_its_checkpoint(tmp_path, capsys):
    """A stage that died after a checkpoint continues from it on the next run."""
    recipe = make_recipe(tmp_path)
    runs = tmp_path / "runs"
    assert llmkit("run", recipe) == 0
    # simulate a crash of pretrain after its step-3 checkpoint: move the finished run back to staging
    pre = runs / "pre"
    staging = runs / "pre.partial"
    pre.rename(staging)
    (staging / "manifest.json").unlink()
    from llmkit.config import load_stage_config
    from llmkit.stages import pretrain

    cfg = load_stage_config(pretrain.CLASSES, str(recipe / "pretrain.yaml"), None, pretrain.defaults)
    (staging / "llmkit_partial.json").write_text(json.dumps({"stage": "pretrain", "config_hash": cfg.hash()}))
    import shutil

    shutil.rmtree(staging / "checkpoints" / "checkpoint-6")
    assert (staging / "checkpoints" / "checkpoint-3").is_dir()
    # the sft run depends on pretrain: a later stage refuses the unfinished input
    capsys.readouterr()
    assert llmkit("sft", "--config", recipe / "sft.yaml", "--overwrite") == 2
    assert "did not finish" in capsys.readouterr().err
    assert llmkit("run", recipe) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "checkpoint-3" in out
    m = json.loads((pre / "manifest.json").read_text())
    assert m["steps"] == 6 and not staging.exists()


def test_make_data_is_byte_for_byte_reproducible():
    r = subprocess.run([sys.executable, str(DATA / "make_data.py"), "--check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sft_under_accelerate_with_two_cpu_processes(tmp_path, base_model, sft_data):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes/accelerate/cpu_ddp.yaml"),
           "--num_processes", "2", "--num_cpu_threads_per_process", "1", "-m", "llmkit", "sft",
           "--output_dir", str(out), "--model_name_or_path", str(base_model), "--datasets", f"[{sft_data[0]}]",
           "--eval_split_size", "0", "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_length", "128",
           "--use_peft", "--logging_steps", "1", "--sample_prompts", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["steps"] == 3
    # 400 rows, 2 processes x 4 rows per step: 3 steps cover 24 rows = 0.06 epoch (0.03 with one process)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert abs(max(row["epoch"] for row in logged) - 0.06) < 1e-3
    assert r.stdout.count("llmkit sft: done") == 1  # only the main process reports and writes
    assert not any(p.name.endswith((".partial", ".tmp")) or ".old-" in p.name for p in tmp_path.iterdir())


def test_a_stage_whose_input_was_remade_runs_again(tmp_path, capsys):
    recipe = make_recipe(tmp_path)
    runs = tmp_path / "runs"
    assert llmkit("run", recipe) == 0
    before = {s: finished_at(runs / s) for s in ("tok", "pre", "sft")}
    # the user re-makes pretrain by hand (same config)
    assert llmkit("pretrain", "--config", recipe / "pretrain.yaml", "--overwrite") == 0
    capsys.readouterr()
    assert llmkit("run", recipe) == 0
    out = capsys.readouterr().out
    assert "(its input pretrain is newer)" in out
    after = {s: finished_at(runs / s) for s in ("tok", "pre", "sft")}
    assert after["tok"] == before["tok"]
    assert after["sft"] != before["sft"]  # re-made on the new pretrain
    assert out.count("skipping") == 2  # tok and pre
