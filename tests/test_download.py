"""`llmkit download RECIPE_DIR [--eval]` (llmkit.download): what it plans for the shipped
recipes (no network), and through the hub stand-in (tests/hub_standin.py): a recipe's model and
datasets fetched into an empty HF_HOME, the stand-in stopped, then the recipe's first stage and
`llmkit eval` run with HF_HUB_OFFLINE=1 and no server to reach.  Bad input (a missing dataset or
model, a gated repo without a token, a missing revision, offline mode without the cache) is one
`llmkit: error:` line naming the repo and the fix, exit 2, and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from hub_standin import HubStandin, readme
from test_hub import add_model_repos, add_recipe_repos, add_suite_repos, hub_env, run_py

from llmkit import download as llmkit_download
from llmkit.evaluation import suite

# ------------------------------------------------------------------ the plan for the shipped recipes (no network)


def _planned(recipe: str, eval_suite: bool = True) -> tuple[dict[str, set[str]], list[str], list[dict]]:
    items, notes = llmkit_download.plan(REPO / "recipes" / recipe, eval_suite)
    kinds: dict[str, set[str]] = {}
    for it in items:
        kinds.setdefault(it["kind"], set()).add(it["repo"])
    return kinds, notes, items


def test_plan_of_the_shipped_recipes():
    es_repos = {suite.HUB_SOURCES[n].repo for n in suite.GROUPS["es"] if n in suite.HUB_SOURCES}
    kinds, notes, items = _planned("qwen2.5-0.5b-es")
    assert kinds["model"] == {"Qwen/Qwen2.5-0.5B-Instruct"}
    assert kinds["dataset"] == {"bertin-project/alpaca-spanish", "ericrisco/gsm8k-translated-spanish"} | es_repos
    # the stage's own load call (llmkit.data.load_source) and each eval task's source, once each
    alpaca = [it for it in items if it["repo"] == "bertin-project/alpaca-spanish"]
    assert len(alpaca) == 1 and alpaca[0]["load"] == {"path": "bertin-project/alpaca-spanish", "name": None,
                                                      "split": "train", "data_files": None}
    assert {"sft.yaml:datasets", "sft_full.yaml:datasets", "sft_qlora.yaml:datasets"} <= set(alpaca[0]["used_by"])
    evals = [it["load"]["eval_task"] for it in items if (it["load"] or {}).get("eval_task")]
    assert sorted(evals) == sorted(n for n in suite.GROUPS["es"] if n in suite.HUB_SOURCES)
    assert any("runs/qwen2.5-0.5b-es/sft" in n and "not fetched" in n for n in notes)
    # without --eval: no eval datasets
    kinds, _, _ = _planned("qwen2.5-0.5b-es", eval_suite=False)
    assert kinds["dataset"] == {"bertin-project/alpaca-spanish", "ericrisco/gsm8k-translated-spanish"}
    # the embedded default is all local: nothing to fetch
    items, notes = llmkit_download.plan(REPO / "recipes" / "tiny-es", True)
    assert items == [] and any("data_dir" in n for n in notes)


def test_plan_names_every_hub_model_of_every_recipe():
    for pipe in sorted((REPO / "recipes").glob("*/pipeline.yaml")):
        named = set()
        for f in pipe.parent.glob("*.yaml"):
            cfg = yaml.safe_load(f.read_text()) or {}
            for key in ("model_name_or_path", "tokenizer_name_or_path", "reward_model_path"):
                v = cfg.get(key)
                if isinstance(v, str) and v.count("/") == 1 and not v.startswith(("runs/", ".", "/")):
                    named.add(v)
        kinds, _, _ = _planned(pipe.parent.name)
        assert named == kinds.get("model", set()) | kinds.get("tokenizer", set()), pipe.parent.name


def test_plan_bad_recipe(tmp_path):
    from llmkit.config import LlmkitError

    with pytest.raises(LlmkitError, match="no pipeline.yaml"):
        llmkit_download.plan(tmp_path)
    (tmp_path / "pipeline.yaml").write_text("stages: [sft]\n")
    with pytest.raises(LlmkitError, match="no sft.yaml"):
        llmkit_download.plan(tmp_path)


# ------------------------------------------------------------------ through the stand-in

MODEL_ID = "Qwen/Qwen2.5-0.5B-Instruct"  # a real id; the stand-in serves the tiny random model under it
EVAL_TASKS = "copa_es,wnli_es,mgsm_direct_es_spanish_bench"  # a repo id, hf:// csv files, a parquet-conversion revision


def _serve_model(hub: HubStandin, repo_id: str, model_dir: Path, **kw) -> None:
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    files["README.md"] = readme(None, {"license": "apache-2.0"})
    files["pytorch_model.bin"] = b"\0" * 4096  # the same weights in the old format: not fetched
    files["flax_model.msgpack"] = b"\0" * 4096
    hub.add_model(repo_id, files, **kw)


def _recipe(root: Path) -> Path:
    rec = root / "recipe"
    rec.mkdir()
    (rec / "pipeline.yaml").write_text("name: dl-test\nstages: [sft]\n")
    (rec / "sft.yaml").write_text(yaml.safe_dump({
        "output_dir": str(root / "runs" / "sft"), "model_name_or_path": MODEL_ID,
        "datasets": [{"path": "bertin-project/alpaca-spanish", "split": "train", "format": "alpaca"}],
        "eval_split_size": 2, "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": "all-linear",
        "max_length": 128, "per_device_train_batch_size": 2, "max_steps": 1, "logging_steps": 1,
        "save_strategy": "no", "eval_strategy": "no", "sample_prompts": 1, "report_to": "none"}))
    (rec / "eval.yaml").write_text(yaml.safe_dump({"stages": ["sft"], "tasks": EVAL_TASKS, "engine": "transformers",
                                                   "output_dir": str(root / "runs" / "eval")}))
    return rec


def _download_main() -> str:
    """The code the lead's `llmkit download` wiring runs (cli.main prints LlmkitError as one line, exit 2)."""
    return """
        import contextlib, io, json, sys
        from llmkit import download as dl
        from llmkit.config import LlmkitError
        def main(argv):
            try:
                return dl.download_command(argv)
            except LlmkitError as e:
                print(f"llmkit: error: {e}", file=sys.stderr)
                return 2
    """


def _cli(argv: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmkit", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


@pytest.mark.slow
def test_download_then_run_offline(tmp_path, base_model):
    hub = HubStandin(idle_timeout=600)
    add_suite_repos(hub)
    add_recipe_repos(hub)
    _serve_model(hub, MODEL_ID, base_model)
    rec = _recipe(tmp_path)
    home = tmp_path / "hf"
    with hub:
        env = hub_env(hub, home)
        out = run_py(_download_main() + f"""
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rows = dl.download({str(rec)!r}, eval_suite=True)
        print(json.dumps({{"rows": rows, "err": err.getvalue()}}))
        """, env)
    assert hub._server is None  # stopped: from here on nothing answers at HF_ENDPOINT
    rows = {(r["repo"], r["kind"]) for r in out["rows"]}
    want = {(MODEL_ID, "model"), ("bertin-project/alpaca-spanish", "dataset")} | {
        (suite.HUB_SOURCES[t].repo, "dataset") for t in EVAL_TASKS.split(",")}
    assert rows == want
    assert all(r["size"] > 0 for r in out["rows"]), out["rows"]
    model_row = next(r for r in out["rows"] if r["kind"] == "model")
    assert model_row["revision"] == hub.sha(MODEL_ID, repo_type="model")
    assert "size on disk" in out["err"] and MODEL_ID in out["err"] and "llmkit download" in out["err"]
    snap = home / "hub" / f"models--{MODEL_ID.replace('/', '--')}" / "snapshots" / model_row["revision"]
    fetched = {p.name for p in snap.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= fetched
    assert not fetched & {"pytorch_model.bin", "flax_model.msgpack", "README.md"}, fetched

    off = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # HF_ENDPOINT: the stopped stand-in's port
    proc = _cli(["sft", "--config", rec / "sft.yaml"], off)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "runs" / "sft"
    assert json.loads((run_dir / "manifest.json").read_text())["stage"] == "sft"
    # the eval tasks' data and the base model, from the cache
    proc = _cli(["eval", MODEL_ID, "--tasks", EVAL_TASKS, "--limit", "2", "--engine", "transformers",
                 "--output_dir", tmp_path / "eval", "--bootstrap_iters", "10"], off)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(res["tasks"]) == set(EVAL_TASKS.split(",")) and all(t["n"] == 2 for t in res["tasks"].values())
    # and the offline check of the download itself
    out = run_py(_download_main() + f"""
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main([{str(rec)!r}, "--eval"])
        print(json.dumps({{"rc": rc, "err": err.getvalue()}}))
    """, off)
    assert out["rc"] == 0 and "all 5 model(s)/dataset(s) are in the cache" in out["err"], out["err"]
    # the SFT run (a LoRA adapter over the hub base) evaluated offline
    proc = _cli(["eval", run_dir, "--tasks", "copa_es", "--limit", "2", "--engine", "transformers",
                 "--output_dir", tmp_path / "eval_run", "--bootstrap_iters", "10"], off)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((tmp_path / "eval_run" / "results.json").read_text())["tasks"]["copa_es"]["n"] == 2


def _bad_recipe(root: Path, name: str, model: str = MODEL_ID, dataset: str = "bertin-project/alpaca-spanish") -> Path:
    rec = root / name
    rec.mkdir()
    (rec / "pipeline.yaml").write_text("stages: [sft]\n")
    (rec / "sft.yaml").write_text(yaml.safe_dump({"output_dir": str(root / "runs" / name), "model_name_or_path": model,
                                                  "datasets": [{"path": dataset, "split": "train"}]}))
    return rec


BAD = {
    # case -> (argv builder, offline mode, words the one error line must contain)
    "missing_dataset": (lambda r: [_bad_recipe(r, "d", dataset="nobody/no-such-data")], False,
                        ["nobody/no-such-data", "does not exist", "hf auth login", "HF_TOKEN", "named by sft.yaml:datasets"]),
    "missing_model": (lambda r: [_bad_recipe(r, "m", model="nobody/no-such-model")], False,
                      ["nobody/no-such-model", "does not exist", "hf auth login", "sft.yaml:model_name_or_path"]),
    "gated_model": (lambda r: [_bad_recipe(r, "g", model="meta-llama/Llama-3.2-1B-Instruct")], False,
                    ["meta-llama/Llama-3.2-1B-Instruct", "gated", "hf auth login", "HF_TOKEN", "sft.yaml:model_name_or_path"]),
    "missing_revision": (lambda r: ["llmkit-test/tiny-open", "--repo_type", "model", "--revision", "v9"], False,
                         ["llmkit-test/tiny-open", "'v9'", "revision"]),
    "offline_without_cache": (lambda r: [_bad_recipe(r, "o")], True,
                              [MODEL_ID, "offline", f"llmkit download {MODEL_ID} --repo_type model", "sft.yaml:model_name_or_path"]),
    "not_a_recipe": (lambda r: [r / "nowhere"], False, ["nowhere", "recipe directory"]),
}


@pytest.mark.slow
def test_download_bad_input_is_one_line_exit_2_nothing_written(tmp_path, base_model):
    hub = HubStandin(idle_timeout=300)
    add_recipe_repos(hub)
    add_model_repos(hub)  # the recipes' base models (Llama 3.2 gated) and llmkit-test/tiny-open
    _serve_model(hub, MODEL_ID, base_model)
    with hub:
        for case, (argv_of, offline, words) in BAD.items():
            home = tmp_path / f"hf-{case}"
            argv = [str(a) for a in argv_of(tmp_path)]
            out = run_py(_download_main() + f"""
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main({argv!r})
        print(json.dumps({{"rc": rc, "err": err.getvalue()}}))
            """, hub_env(hub, home, offline=offline))
            lines = [ln for ln in out["err"].splitlines() if ln.startswith("llmkit: error:")]
            assert out["rc"] == 2 and len(lines) == 1, (case, out)
            for w in words:
                assert w in lines[0], (case, w, lines[0])
            written = [p for p in (home / "hub").glob("*--*")] + [p for p in (home / "datasets").glob("*") if p.is_dir()]
            assert written == [], (case, written)
        # with a token the gated model passes the check (the stand-in accepts any bearer token)
        out = run_py(_download_main() + """
        print(json.dumps({"rc": main(["meta-llama/Llama-3.2-1B-Instruct", "--repo_type", "model"])}))
        """, {**hub_env(hub, tmp_path / "hf-token"), "HF_TOKEN": "hf_test"})
        assert out["rc"] == 0


@pytest.mark.slow
def test_download_one_repo_as_the_error_lines_suggest(tmp_path):
    """`llmkit download REPO` (what the offline error lines suggest) makes that repo load
    offline: a recipe dataset through llmkit.data, an eval dataset through its tasks' loader."""
    hub = HubStandin(idle_timeout=300)
    add_suite_repos(hub)
    add_recipe_repos(hub)
    home = tmp_path / "hf"
    with hub:
        env = hub_env(hub, home)
        out = run_py(_download_main() + """
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rcs = [main(["bertin-project/alpaca-spanish"]), main(["juletxara/mgsm"])]
        print(json.dumps({"rcs": rcs, "err": err.getvalue()}))
        """, env)
    assert out["rcs"] == [0, 0], out["err"]
    off = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = run_py("""
        import json
        from llmkit import data
        from llmkit.evaluation import suite
        rows, _, _ = data.load_source({"path": "bertin-project/alpaca-spanish", "split": "train", "format": "alpaca"})
        ds = suite.load_hub_dataset("mgsm_direct_es_spanish_bench", ("test", "train"))
        try:
            suite.load_hub_dataset("copa_es", ("test",))
            copa = "loaded"
        except Exception as e:
            copa = str(e)
        print(json.dumps({"n": len(rows), "mgsm": ds["test"].num_rows, "copa": copa}))
    """, off)
    assert out["n"] == 6 and out["mgsm"] > 0
    assert "BSC-LT/COPA-es" in out["copa"] and "offline" in out["copa"] and "llmkit download BSC-LT/COPA-es" in out["copa"]
