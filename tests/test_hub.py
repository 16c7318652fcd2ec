"""The eval suite and the recipes' datasets loaded from the hub, through a local stand-in of it
(tests/hub_standin.py) reached by ``HF_ENDPOINT``: the real ``datasets`` / ``huggingface_hub`` /
lm-eval code paths, the exact ids, configs, revisions and file layouts the tasks and recipes
name (see docs/evaluation.md for which layouts come from a dataset card and which are assumed),
rows in each repo's column schema.  Everything that touches the hub runs in a subprocess with
its own ``HF_HOME`` (nothing cached between tests) and the offline switches of ``make test``
turned off; the server binds 127.0.0.1 only.

A bare id (the harness's ``xnli``), a repo published as a loading script, a wrong column, a
missing repo or revision, a gated repo without a token and offline mode without a cache each
fail a test here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, read_jsonl
from hub_standin import HubStandin, csv_bytes, jsonl_bytes, parquet_bytes, readme

pytestmark = pytest.mark.slow
FIXTURES = REPO / "tests" / "fixtures" / "eval"
ALL_HUB_TASKS = [
    "xnli_es_spanish_bench", "paws_es_spanish_bench", "conll2002_es", "sqac_es", "sts_es", "xquad_es",
    "mgsm_direct_es_spanish_bench", "copa_es", "xstorycloze_es", "belebele_spa_Latn", "openbookqa_es", "escola", "wnli_es",
]
ES_HUB_TASKS = list(ALL_HUB_TASKS)  # the `es` group without mldoc_es (local only)
NEW_HUB_TASKS = [  # es_gen and es_mmlu: the rest of spanish_bench, Global-MMLU Lite (es)
    "xlsum_es", "cocoteros_es", "phrases_es-va", "phrases_va-es", "eqbench_es",
    *[f"spanish_bench_flores_{a}-{b}" for x in ("en", "eu", "pt", "it", "fr", "ca", "gl", "de") for a, b in ((x, "es"), ("es", x))],
    *[f"global_mmlu_es_{c}" for c in ("business", "humanities", "medical", "other", "stem", "social_sciences")],
]
ALL_HUB_TASKS = ALL_HUB_TASKS + NEW_HUB_TASKS
PARQUET_REF = "refs/convert/parquet"
STSES_REV = "fe7158e70012087b5a692ce175226a0d213936ad"


def rows(task: str, split: str) -> list[dict]:
    return read_jsonl(FIXTURES / task / f"{split}.jsonl")


def _configs(name: str, splits: dict[str, str], default: bool = False) -> dict:
    c = {"config_name": name, "data_files": [{"split": s, "path": p} for s, p in splits.items()]}
    if default:
        c["default"] = True
    return c


def _script(name: str) -> bytes:
    return (f'"""{name}: a datasets loading script (as published on the hub)."""\nimport datasets\n\n\n'
            f"class Builder(datasets.GeneratorBasedBuilder):\n    pass\n").encode()


# ------------------------------------------------------------------ the repos, in each one's own layout


def add_suite_repos(hub: HubStandin, *, skip: tuple[str, ...] = (), variant: dict | None = None) -> None:
    """Every repo the suite reads, as its card documents it (or as assumed, see docs/evaluation.md),
    with the fixtures' rows in the repo's column schema; ``variant`` replaces repos by id."""
    import datasets as D

    from llmkit.evaluation.tasks.utils import CONLL_TAGS

    variant = variant or {}
    splits3 = ("train", "validation", "test")

    def add(repo_id, files, **kw):
        if repo_id in skip:
            return
        hub.add_dataset(repo_id, variant.get(repo_id, files), **kw)

    # facebook/xnli: one parquet config per language (card: dataset_info per config; label ClassLabel)
    xnli_feat = D.Features({"premise": D.Value("string"), "hypothesis": D.Value("string"),
                            "label": D.ClassLabel(names=["entailment", "neutral", "contradiction"])})
    xnli = rows("xnli_es_spanish_bench", "validation")
    files = {"README.md": readme([_configs(lang, {s: f"{lang}/{s}-*" for s in ("train", "test", "validation")})
                                  for lang in ("en", "es")], {"license": "cc-by-nc-4.0"})}
    for lang in ("en", "es"):
        for s in ("train", "test", "validation"):
            files[f"{lang}/{s}-00000-of-00001.parquet"] = parquet_bytes(xnli, xnli_feat)
    add("facebook/xnli", files)
    hub.alias("xnli", "facebook/xnli")

    # google-research-datasets/paws-x (card: id int32, sentence1, sentence2, label ClassLabel '0'/'1')
    paws_feat = D.Features({"id": D.Value("int32"), "sentence1": D.Value("string"), "sentence2": D.Value("string"),
                            "label": D.ClassLabel(names=["0", "1"])})
    files = {"README.md": readme([_configs("es", {s: f"es/{s}-*" for s in splits3})], {"license": "other"})}
    for s in splits3:
        split_rows = rows("paws_es_spanish_bench", "test" if s != "train" else "train")
        files[f"es/{s}-00000-of-00001.parquet"] = parquet_bytes(split_rows, paws_feat)
    add("google-research-datasets/paws-x", files)
    hub.alias("paws-x", "google-research-datasets/paws-x")

    # eriktks/conll2002 (parquet, configs es / nl; the conll2002 script's features)
    conll_feat = D.Features({"id": D.Value("string"), "tokens": D.Sequence(D.Value("string")),
                             "pos_tags": D.Sequence(D.ClassLabel(num_classes=60)),
                             "ner_tags": D.Sequence(D.ClassLabel(names=list(CONLL_TAGS)))})
    files = {"README.md": readme([_configs("es", {s: f"es/{s}-*" for s in splits3})])}
    for s in splits3:
        files[f"es/{s}-00000-of-00001.parquet"] = parquet_bytes(rows("conll2002_es", "train" if s == "train" else "test"), conll_feat)
    add("eriktks/conll2002", files)
    add("conll2002", {"README.md": readme(None, {"license": "unknown"}), "conll2002.py": _script("conll2002")})

    # PlanTL-GOB-ES/SQAC: a loading script beside raw SQuAD-style JSON ({"data": [articles]})
    def squad(flat):
        arts: dict[str, dict] = {}
        for r in flat:
            art = arts.setdefault(r["title"], {"title": r["title"], "paragraphs": []})
            art["paragraphs"].append({"context": r["context"], "qas": [{
                "question": r["question"], "id": r["id"],
                "answers": [{"text": t, "answer_start": a} for t, a in zip(r["answers"]["text"], r["answers"]["answer_start"])]}]})
        return json.dumps({"version": "1.0", "data": list(arts.values())}, ensure_ascii=False).encode()

    add("PlanTL-GOB-ES/SQAC", {"README.md": readme(None, {"license": "cc-by-sa-4.0"}), "SQAC.py": _script("SQAC"),
                               "train.json": squad(rows("sqac_es", "train")), "dev.json": squad(rows("sqac_es", "train")),
                               "test.json": squad(rows("sqac_es", "test"))})

    # STS-es: PlanTL's repo is a script; mteb/STSES has the test split (revision pinned by mteb)
    add("PlanTL-GOB-ES/sts-es", {"README.md": readme(None), "sts-es.py": _script("sts-es")})
    sts_feat = D.Features({"sentence1": D.Value("string"), "sentence2": D.Value("string"), "score": D.Value("float64")})
    sts = {"README.md": readme([_configs("default", {"test": "data/test-*"}, default=True)], {"license": "cc-by-4.0"}),
           "data/test-00000-of-00001.parquet": parquet_bytes(rows("sts_es", "test"), sts_feat)}
    add("mteb/STSES", sts, revision=STSES_REV)
    add("mteb/STSES", sts)

    # google/xquad: one config per language, validation only
    xq_feat = D.Features({"id": D.Value("string"), "context": D.Value("string"), "question": D.Value("string"),
                          "answers": D.Sequence({"text": D.Value("string"), "answer_start": D.Value("int32")})})
    add("google/xquad", {"README.md": readme([_configs("xquad.es", {"validation": "xquad.es/validation-*"})]),
                         "xquad.es/validation-00000-of-00001.parquet": parquet_bytes(rows("xquad_es", "validation"), xq_feat)})

    # juletxara/mgsm and juletxara/xstory_cloze: loading scripts on main, the viewer's parquet
    # conversion on refs/convert/parquet (<config>/<split>/0000.parquet)
    add("juletxara/mgsm", {"README.md": readme(None), "mgsm.py": _script("mgsm"), "mgsm_es.tsv": b"q\t1\n"})
    mgsm_feat = D.Features({"question": D.Value("string"), "answer": D.Value("string"), "answer_number": D.Value("int32"),
                            "equation_solution": D.Value("string")})
    add("juletxara/mgsm", {f"{lang}/{s}/0000.parquet": parquet_bytes(rows("mgsm_direct_es_spanish_bench", s), mgsm_feat)
                           for lang in ("en", "es") for s in ("train", "test")}, revision=PARQUET_REF)
    add("juletxara/xstory_cloze", {"README.md": readme(None), "xstory_cloze.py": _script("xstory_cloze")})
    add("juletxara/xstory_cloze", {f"es/{s}/0000.parquet": parquet_bytes(rows("xstorycloze_es", s)) for s in ("train", "eval")},
        revision=PARQUET_REF)

    # BSC-LT/COPA-es and BSC-LT/openbookqa-es: one default config (the hub has `id`, not `idx`)
    add("BSC-LT/COPA-es", {"README.md": readme([_configs("default", {s: f"{s}.jsonl" for s in ("validation", "test")}, True)]),
                           **{f"{s}.jsonl": jsonl_bytes(rows("copa_es", s)) for s in ("validation", "test")}})
    add("BSC-LT/openbookqa-es", {"README.md": readme([_configs("default", {s: f"data/{s}-*" for s in ("validation", "test")}, True)]),
                                 **{f"data/{s}-00000-of-00001.parquet": parquet_bytes(rows("openbookqa_es", s))
                                    for s in ("validation", "test")}})

    # facebook/belebele: one jsonl per language under data/, split test
    add("facebook/belebele", {"README.md": readme([_configs("spa_Latn", {"test": "data/spa_Latn.jsonl"})]),
                              "data/spa_Latn.jsonl": jsonl_bytes(rows("belebele_spa_Latn", "test"))})

    # nbel/EsCoLA: tab-separated files, no configs in the card (splits from the file names)
    add("nbel/EsCoLA", {"README.md": readme(None, {"license": "cc-by-nc-sa-4.0", "language": ["es"]}),
                        "train.tsv": csv_bytes(rows("escola", "train"), "\t"), "dev.tsv": csv_bytes(rows("escola", "validation"), "\t")})

    # csebuetnlp/xlsum and facebook/flores: loading scripts on main, the viewer's parquet
    # conversion on refs/convert/parquet (<config>/<split>/0000.parquet; assumed, see docs/evaluation.md)
    add("csebuetnlp/xlsum", {"README.md": readme(None, {"license": "cc-by-nc-sa-4.0"}), "xlsum.py": _script("xlsum")})
    add("csebuetnlp/xlsum", {f"{lang}/{s}/0000.parquet": parquet_bytes(rows("xlsum_es", "test" if s == "test" else "train"))
                             for lang in ("english", "spanish") for s in ("train", "test", "validation")}, revision=PARQUET_REF)
    add("facebook/flores", {"README.md": readme(None, {"license": "cc-by-sa-4.0"}), "flores.py": _script("flores")})
    fl = "spanish_bench_flores_en-es"
    add("facebook/flores", {**{f"all/{s}/0000.parquet": parquet_bytes(rows(fl, s)) for s in ("dev", "devtest")},
                            **{f"eng_Latn-spa_Latn/{s}/0000.parquet": parquet_bytes(
                                [{k: v for k, v in r.items() if k in ("id", "sentence_eng_Latn", "sentence_spa_Latn")}
                                 for r in rows(fl, s)]) for s in ("dev", "devtest")}}, revision=PARQUET_REF)

    # gplsi/cocoteros: tab-separated files, split names in the file names (no configs in the card)
    add("gplsi/cocoteros", {"README.md": readme(None, {"language": ["es"], "pretty_name": "COCOTEROS"}),
                            **{f"cocoteros_{s}.tsv": csv_bytes(rows("cocoteros_es", s), "\t") for s in ("train", "test")}})
    # gplsi/ES-VA_translation_test, BSC-LT/EQ-bench_es: a test split only
    add("gplsi/ES-VA_translation_test", {"README.md": readme([_configs("default", {"test": "data/test-*"}, True)]),
                                         "data/test-00000-of-00001.parquet": parquet_bytes(rows("phrases_es-va", "test"))})
    add("BSC-LT/EQ-bench_es", {"README.md": readme([_configs("default", {"test": "test.jsonl"}, True)]),
                               "test.jsonl": jsonl_bytes(rows("eqbench_es", "test"))})
    # CohereLabs/Global-MMLU-Lite: one parquet config per language, test and dev
    mmlu = {"README.md": readme([_configs(lang, {s: f"{lang}/{s}-*" for s in ("test", "dev")}) for lang in ("en", "es")],
                                {"license": "apache-2.0"})}
    for lang in ("en", "es"):
        for s in ("test", "dev"):
            mmlu[f"{lang}/{s}-00000-of-00001.parquet"] = parquet_bytes(rows("global_mmlu_es_stem", s))
    add("CohereLabs/Global-MMLU-Lite", mmlu)

    # PlanTL-GOB-ES/wnli-es: csv files the harness names by hf:// URL
    add("PlanTL-GOB-ES/wnli-es", {"README.md": readme(None), "wnli-es.py": _script("wnli-es"),
                                  "wnli-train-es.csv": csv_bytes(rows("wnli_es", "train")),
                                  "wnli-dev-es.csv": csv_bytes(rows("wnli_es", "validation"))})


def add_recipe_repos(hub: HubStandin) -> None:
    """The hub datasets the recipes name (recipes/qwen2.5-0.5b-es): parquet under data/."""
    alpaca = [{"instruction": f"Escribe una frase sobre el número {i}.", "input": "" if i % 2 else "con un verbo",
               "output": f"El número {i} es mi favorito."} for i in range(6)]
    hub.add_dataset("bertin-project/alpaca-spanish", {"README.md": readme(None, {"license": "cc-by-4.0"}),
                                                      "data/train-00000-of-00001.parquet": parquet_bytes(alpaca)})
    gsm = [{"question": f"Ana tiene {i} manzanas y compra 2 más. ¿Cuántas tiene?",
            "answer": f"Tiene {i} + 2 = {i + 2} manzanas.\n#### {i + 2}"} for i in range(6)]
    hub.add_dataset("ericrisco/gsm8k-translated-spanish", {"README.md": readme(None),
                                                           "data/train-00000-of-00001.parquet": parquet_bytes(gsm)})


def add_model_repos(hub: HubStandin) -> None:
    cfg = json.dumps({"model_type": "llama", "hidden_size": 8}).encode()
    hub.add_model("llmkit-test/tiny-open", {"config.json": cfg})
    hub.add_model("llmkit-test/tiny-gated", {"config.json": cfg}, gated=True)
    # the recipes' base models: Llama 3.2 and Gemma 3 are gated on the hub (licence to accept)
    for repo_id, gated in RECIPE_MODELS.items():
        hub.add_model(repo_id, {"config.json": cfg, "README.md": readme(None, {"license": "other"})}, gated=gated)


RECIPE_MODELS = {"Qwen/Qwen2.5-0.5B-Instruct": False, "Qwen/Qwen3-0.6B": False, "BSC-LT/salamandra-2b-instruct": False,
                 "google/gemma-3-1b-it": True, "meta-llama/Llama-3.2-1B-Instruct": True}


def hub_env(hub: HubStandin, home: Path, offline: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "LLMKIT_EVAL_DATA_DIR")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_OFFLINE="1" if offline else "0",
               HF_DATASETS_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONPATH=str(REPO / "tests"),
               LLMKIT_CACHE_DIR=str(home / "llmkit"))
    return env


def run_py(code: str, env: dict[str, str], timeout: int = 600) -> dict:
    """Run CODE in a fresh interpreter; it prints one JSON object on its last stdout line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hub(hub_standin):
    add_suite_repos(hub_standin)
    add_recipe_repos(hub_standin)
    add_model_repos(hub_standin)
    return hub_standin


# ------------------------------------------------------------------ the stand-in follows the hub's protocol


def test_standin_speaks_the_hub_protocol(hub, tmp_path):
    """huggingface_hub's own client against the stand-in: info, tree, paths-info, downloads
    (a URL-encoded refs/convert/parquet revision, a commit sha), and the hub's error codes."""
    out = run_py(f"""
        import json, huggingface_hub as hf
        from huggingface_hub import errors
        api = hf.HfApi()
        r = {{}}
        info = api.dataset_info("facebook/xnli")
        r["sha"] = info.sha
        r["siblings"] = sorted(s.rfilename for s in info.siblings)
        r["tree_es"] = sorted(f.path for f in api.list_repo_tree("facebook/xnli", "es", repo_type="dataset"))
        r["paths"] = [p.path for p in api.get_paths_info("facebook/xnli", ["README.md", "es"], repo_type="dataset")]
        p = hf.hf_hub_download("juletxara/mgsm", "es/test/0000.parquet", repo_type="dataset", revision="{PARQUET_REF}")
        r["parquet_ref"] = p.split("snapshots/")[1].split("/")[0]
        r["by_sha"] = bool(hf.hf_hub_download("facebook/xnli", "README.md", repo_type="dataset", revision=info.sha))
        def err(f):
            try:
                f()
            except Exception as e:
                return type(e).__name__
        r["missing_repo"] = err(lambda: api.dataset_info("nobody/nothing"))
        r["missing_rev"] = err(lambda: api.dataset_info("facebook/xnli", revision="v9"))
        r["missing_file"] = err(lambda: hf.hf_hub_download("facebook/xnli", "nope.txt", repo_type="dataset"))
        r["gated"] = err(lambda: hf.hf_hub_download("llmkit-test/tiny-gated", "config.json"))
        r["gated_token"] = bool(hf.hf_hub_download("llmkit-test/tiny-gated", "config.json", token="hf_test"))
        print(json.dumps(r))
    """, hub_env(hub, tmp_path / "hf"))
    assert out["sha"] == hub.sha("facebook/xnli") and "es/validation-00000-of-00001.parquet" in out["siblings"]
    assert out["tree_es"] == [f"es/{s}-00000-of-00001.parquet" for s in ("test", "train", "validation")]
    assert out["paths"] == ["README.md", "es"]
    assert out["parquet_ref"] == hub.sha("juletxara/mgsm", PARQUET_REF) and out["by_sha"]
    assert out["missing_repo"] == "RepositoryNotFoundError" and out["missing_rev"] == "RevisionNotFoundError"
    assert out["missing_file"] in ("RemoteEntryNotFoundError", "EntryNotFoundError")
    assert out["gated"] == "GatedRepoError" and out["gated_token"]
    assert ("GET", f"/api/datasets/juletxara/mgsm/revision/{PARQUET_REF}") in hub.requests or any(
        PARQUET_REF in p for _, p in hub.requests)


# ------------------------------------------------------------------ what fails on the hub fails here


def test_harness_sources_as_shipped_fail_and_llmkit_sources_load(hub, tmp_path):
    """lm-eval 0.4.13's own data sources (bare ids, scripts) fail through the stand-in exactly as
    on the hub; every llmkit source loads, with the task's splits and columns."""
    out = run_py("""
        import json
        import datasets
        from llmkit.evaluation import suite
        from llmkit.config import LlmkitError
        tm = suite.task_manager()
        r = {"harness": {}, "script": {}, "ours": {}}
        for name in ("xnli_es_spanish_bench", "paws_es_spanish_bench"):
            try:
                tm.load([suite.task_config(name, tm)])  # the harness's YAML, data source untouched
                r["harness"][name] = "loaded"
            except Exception as e:
                r["harness"][name] = f"{type(e).__name__}: {e}"
        for repo in ("conll2002", "PlanTL-GOB-ES/SQAC", "PlanTL-GOB-ES/sts-es", "juletxara/mgsm", "juletxara/xstory_cloze"):
            try:
                datasets.load_dataset(repo, "es" if "juletxara" in repo else None)
                r["script"][repo] = "loaded"
            except Exception as e:
                r["script"][repo] = f"{type(e).__name__}: {e}"
        for name in suite.HUB_SOURCES:
            ds = suite.load_hub_dataset(name, suite.splits_read(suite.hub_spec(name, tm)))
            r["ours"][name] = {split: [ds[split].num_rows, ds[split].column_names] for split in ds}
        built = tm.load([suite.task_spec(n, None, tm) for n in ("sqac_es", "sts_es", "conll2002_es")])["tasks"]
        r["sqac_doc"] = built["sqac_es"].test_docs()[0]
        r["sqac_n"] = len(built["sqac_es"].test_docs())
        r["sts_doc"] = built["sts_es"].test_docs()[0]
        r["conll_doc"] = built["conll2002_es"].test_docs()[0]["target"]
        print(json.dumps(r, default=str))
    """, hub_env(hub, tmp_path / "hf"))
    for name, res in out["harness"].items():
        assert "HfUriError" in res and "namespace/name" in res, (name, res)
    for repo, res in out["script"].items():
        assert "Dataset scripts are no longer supported" in res, (repo, res)
    from llmkit.evaluation import suite

    assert set(out["ours"]) == set(ALL_HUB_TASKS)
    for name, splits in out["ours"].items():
        for split in suite.TASKS[name].splits:
            n, cols = splits[split]
            assert n >= (1 if name == "sqac_es" else 5), (name, split)  # SQAC: rows are articles
            want = suite.HUB_SOURCES[name].columns or suite.TASKS[name].columns
            assert set(want) <= set(cols), (name, split, cols)
    sqac = out["sqac_doc"]  # flattened from the nested JSON: one row per question
    assert out["sqac_n"] == len(rows("sqac_es", "test"))
    first = rows("sqac_es", "test")[0]
    assert (sqac["context"], sqac["question"], sqac["answers"]["text"]) == (first["context"], first["question"], first["answers"]["text"])
    assert out["sts_doc"]["label"] == rows("sts_es", "test")[0]["score"]
    assert out["conll_doc"].startswith("PER: Marta Salinas")
    # each task read its repo at the revision it names
    assert hub.touched("mteb/STSES") and any(STSES_REV in p for _, p in hub.requests)
    for repo in ("juletxara/mgsm", "juletxara/xstory_cloze"):
        assert any(repo in p and (PARQUET_REF in p or hub.sha(repo, PARQUET_REF) in p) for _, p in hub.requests), repo


# ------------------------------------------------------------------ llmkit eval, every task, no data_dir


def test_eval_every_task_from_the_hub(hub, tmp_path, base_model):
    """`llmkit eval RUN --tasks es --limit 5` with no data dir scores every task through the
    stand-in (mldoc_es, local only, is skipped with its note)."""
    out = tmp_path / "eval"
    env = hub_env(hub, tmp_path / "hf")
    hub.requests.clear()
    proc = subprocess.run([sys.executable, "-m", "llmkit", "eval", str(base_model), "--tasks", "es", "--limit", "5",
                           "--engine", "transformers", "--output_dir", str(out), "--bootstrap_iters", "10"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "skipping mldoc_es" in proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"]) == set(ES_HUB_TASKS)
    assert res["settings"]["data_dir"] is None
    for name, t in res["tasks"].items():
        assert t["n"] == 5, name
        assert t["primary"] in t["metrics"], name
    from llmkit.evaluation import suite

    configs = res["lm_eval"]["configs"]
    for name in ES_HUB_TASKS:
        src = suite.HUB_SOURCES[name]
        assert configs[name]["dataset_path"] == src.path, name
        assert "/" in src.repo and hub.touched(src.repo), name


def test_eval_new_tasks_from_the_hub(hub, tmp_path, base_model):
    """`llmkit eval RUN --tasks es_gen,es_mmlu --limit 2` (the rest of spanish_bench and
    Global-MMLU Lite es) from the stand-in: every task scored, its primary metric and chance
    reported; ROUGE-1 computed locally (the harness's aggregation loads a metric script from the
    hub, which the stand-in does not serve)."""
    out = tmp_path / "eval"
    hub.requests.clear()
    proc = subprocess.run([sys.executable, "-m", "llmkit", "eval", str(base_model), "--tasks", "es_gen,es_mmlu",
                           "--limit", "2", "--engine", "transformers", "--output_dir", str(out), "--bootstrap_iters", "10"],
                          capture_output=True, text=True, env=hub_env(hub, tmp_path / "hf"), cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    from llmkit.evaluation import suite

    assert set(res["tasks"]) == set(NEW_HUB_TASKS) == set(suite.GROUPS["es_gen"] + suite.GROUPS["es_mmlu"])
    for name, t in res["tasks"].items():
        assert t["n"] == 2, name
        assert t["primary"] == suite.TASKS[name].primary and t["primary"] in t["metrics"], name
        assert t["chance"] == suite.TASKS[name].chance[t["primary"]], name
    assert 0.0 <= res["tasks"]["xlsum_es"]["metrics"]["rouge1"]["value"] <= 1.0
    assert not any("evaluate-metric" in p or "/spaces/" in p for _, p in hub.requests)
    for name in NEW_HUB_TASKS:
        assert hub.touched(suite.HUB_SOURCES[name].repo), name


def test_new_tasks_build_from_the_local_fixtures():
    """Each es_gen / es_mmlu task's fixtures (tests/fixtures/eval) pass the schema check and the
    harness builds the task from them: prompts and targets from the real columns."""
    from llmkit.evaluation import suite

    tm = suite.task_manager()
    built = tm.load([suite.task_spec(n, FIXTURES, tm) for n in NEW_HUB_TASKS])["tasks"]
    for name in NEW_HUB_TASKS:
        task = built[name]
        docs = list(task.test_docs() if task.has_test_docs() else task.validation_docs())
        assert len(docs) >= 2, name
        assert task.doc_to_text(docs[0]).strip() and str(task.doc_to_target(docs[0])).strip(), name
    doc = built["spanish_bench_flores_en-es"].test_docs()[0]
    assert built["spanish_bench_flores_en-es"].doc_to_target(doc) == rows("spanish_bench_flores_en-es", "devtest")[0]["sentence_spa_Latn"]
    assert [d["subject_category"] for d in built["global_mmlu_es_stem"].test_docs()] == ["STEM", "STEM"]
    from llmkit.evaluation.tasks import utils as task_utils

    for name in ("xlsum_es", "cocoteros_es"):  # ROUGE-1 computed locally, not by evaluate.load("rouge")
        aggs = [m["aggregation"] for m in suite.task_config(name, tm)["metric_list"]]
        assert task_utils.rouge1_agg in aggs, name
    assert task_utils.rouge1_agg([("el gato negro", "el gato negro"), ("a b", "c d")]) == 0.5


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written

BAD_CASES = {
    # task -> (what the broken hub does, words the error must contain)
    "xquad_es": ("google/xquad missing", ["google/xquad", "does not exist", "hf auth login"]),
    "belebele_spa_Latn": ("facebook/belebele gated", ["facebook/belebele", "gated", "hf auth login", "HF_TOKEN"]),
    "sts_es": ("mteb/STSES without the pinned revision", ["mteb/STSES", STSES_REV, "revision"]),
    "copa_es": ("BSC-LT/COPA-es with a renamed column", ["BSC-LT/COPA-es", "premise"]),
    "escola": ("nbel/EsCoLA with Label as text", ["nbel/EsCoLA", "Label should be int"]),
}


@pytest.fixture(scope="module")
def broken_hub():
    hub = HubStandin()
    copa = [{("premisa" if k == "premise" else k): v for k, v in r.items()} for r in rows("copa_es", "test")]
    escola = [{**r, "Label": "sí" if r["Label"] else "no"} for r in rows("escola", "train")]
    add_suite_repos(hub, skip=("google/xquad",), variant={
        "BSC-LT/COPA-es": {"README.md": readme([_configs("default", {s: f"{s}.jsonl" for s in ("validation", "test")}, True)]),
                           "validation.jsonl": jsonl_bytes(copa), "test.jsonl": jsonl_bytes(copa)},
        "nbel/EsCoLA": {"README.md": readme(None), "train.tsv": csv_bytes(escola, "\t"), "dev.tsv": csv_bytes(escola, "\t")},
    })
    del hub.repos[("dataset", "mteb/STSES")].revisions[STSES_REV]
    hub.repos[("dataset", "facebook/belebele")].gated = True
    with hub:
        yield hub


def _cli_calls(calls: list[list[str]]) -> str:
    return f"""
        import contextlib, io, json
        from llmkit.cli import main
        out = []
        for argv in {calls!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(argv)
            out.append([rc, err.getvalue()])
        print(json.dumps(out))
    """


def test_bad_hub_input_is_one_line_and_exit_2(broken_hub, tmp_path, base_model):
    calls = [["eval", str(base_model), "--tasks", task, "--engine", "transformers", "--limit", "2",
              "--output_dir", str(tmp_path / task)] for task in BAD_CASES]
    results = run_py(_cli_calls(calls), hub_env(broken_hub, tmp_path / "hf"))
    for (task, (case, words)), (rc, err) in zip(BAD_CASES.items(), results):
        lines = [ln for ln in err.splitlines() if ln.startswith("llmkit: error:")]
        assert rc == 2 and len(lines) == 1, (task, case, rc, err[-2000:])
        for w in words:
            assert w in lines[0], (task, case, w, lines[0])
        assert task in lines[0], (task, lines[0])
        assert not (tmp_path / task).exists(), task


def test_offline_without_cache_is_one_line(hub, tmp_path, base_model):
    out = tmp_path / "eval"
    env = hub_env(hub, tmp_path / "empty_hf", offline=True)
    results = run_py(_cli_calls([["eval", str(base_model), "--tasks", "xnli_es_spanish_bench", "--engine", "transformers",
                                  "--output_dir", str(out)]]), env)
    rc, err = results[0]
    lines = [ln for ln in err.splitlines() if ln.startswith("llmkit: error:")]
    assert rc == 2 and len(lines) == 1, err[-2000:]
    assert "facebook/xnli" in lines[0] and "offline" in lines[0] and "llmkit download facebook/xnli" in lines[0]
    assert not out.exists()


def test_model_and_dataset_errors_name_the_repo_and_the_fix(hub, tmp_path):
    """llmkit.hub.check_repo / explain over the real client calls, for models and datasets."""
    code = """
        import json
        from llmkit import hub
        from llmkit.config import LlmkitError
        r = {}
        for key, args in {"missing_model": ("llmkit-test/nope", "model"), "gated_model": ("llmkit-test/tiny-gated", "model"),
                          "bad_revision": ("llmkit-test/tiny-open", "model", "v2"), "ok_model": ("llmkit-test/tiny-open", "model"),
                          "missing_dataset": ("nobody/nothing", "dataset"), "ok_dataset": ("facebook/xnli", "dataset")}.items():
            try:
                hub.check_repo(*args)
                r[key] = "ok"
            except LlmkitError as e:
                r[key] = str(e)
        print(json.dumps(r))
    """
    r = run_py(code, hub_env(hub, tmp_path / "hf"))
    assert r["ok_model"] == "ok" and r["ok_dataset"] == "ok"
    assert "llmkit-test/nope" in r["missing_model"] and "does not exist" in r["missing_model"] and "HF_TOKEN" in r["missing_model"]
    assert "gated" in r["gated_model"] and "hf auth login" in r["gated_model"] and "HF_TOKEN" in r["gated_model"]
    assert "'v2'" in r["bad_revision"] and "llmkit-test/tiny-open" in r["bad_revision"]
    assert "nobody/nothing" in r["missing_dataset"]
    off = run_py(code, hub_env(hub, tmp_path / "empty_hf", offline=True))
    assert "offline" in off["ok_model"] and "llmkit download llmkit-test/tiny-open --repo_type model" in off["ok_model"]


# ------------------------------------------------------------------ the recipes' hub datasets


def test_recipe_datasets_load_from_the_hub(hub, tmp_path):
    """Every hub dataset a recipe names loads through llmkit's loader and converts to its format."""
    import yaml

    specs = []
    for cfg_file in sorted((REPO / "recipes").glob("*/*.yaml")):
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
        for key in ("datasets", "eval_datasets"):
            for spec in cfg.get(key) or []:
                if isinstance(spec, dict) and "/" in str(spec.get("path")) and not Path(REPO / spec["path"]).exists():
                    specs.append((cfg_file.stem, spec))
    assert {s["path"] for _, s in specs} >= {"bertin-project/alpaca-spanish", "ericrisco/gsm8k-translated-spanish"}
    out = run_py(f"""
        import json
        from llmkit import data
        r = []
        for stage, spec in {specs!r}:
            rows, name, local = data.load_source(spec)
            r.append([spec["path"], len(rows), sorted(k for k in rows[0] if not k.startswith("__"))])
        print(json.dumps(r))
    """, hub_env(hub, tmp_path / "hf"))
    for path, n, cols in out:
        assert n == 6, path
        assert cols in (["messages"], ["answer", "prompt"]), (path, cols)


def test_docs_list_every_source():
    """docs/evaluation.md names each task's exact source: repo, config and revision."""
    import fnmatch

    from llmkit.evaluation import suite

    text = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")

    def names(row: str) -> list[str]:  # "a, b" or "prefix_* (16)" in the first cell
        return [n.split(" (")[0].strip() for n in row.split("|")[1].split(",")]

    for name, src in suite.HUB_SOURCES.items():
        row = next((ln for ln in text.splitlines() if ln.startswith("| ") and f"| `{src.repo}`" in ln
                    and any(fnmatch.fnmatch(name, n) for n in names(ln))), None)
        assert row is not None, name
        assert src.revision in row and (src.name is None or f"`{src.name}`" in row), (name, row)
        assert all(split in row for split in suite.TASKS[name].splits), (name, row)


def test_recipe_models_checked_on_the_hub(hub, tmp_path):
    """Every hub model a recipe names: open ones pass llmkit.hub.check_repo, gated ones fail
    without a token (naming the fix) and pass with one."""
    import yaml

    named = set()
    for cfg_file in sorted((REPO / "recipes").glob("*/*.yaml")):
        m = (yaml.safe_load(cfg_file.read_text()) or {}).get("model_name_or_path")
        if isinstance(m, str) and "/" in m and not m.startswith(("runs/", "/", ".")):
            named.add(m)
    assert named and named <= set(RECIPE_MODELS), named - set(RECIPE_MODELS)
    code = f"""
        import json, os
        from llmkit import hub
        from llmkit.config import LlmkitError
        r = {{}}
        for repo in {sorted(named)!r}:
            try:
                hub.check_repo(repo, "model")
                r[repo] = "ok"
            except LlmkitError as e:
                r[repo] = str(e)
        print(json.dumps(r))
    """
    no_token = run_py(code, hub_env(hub, tmp_path / "hf"))
    with_token = run_py(code, {**hub_env(hub, tmp_path / "hf"), "HF_TOKEN": "hf_test_token"})
    for repo in named:
        assert with_token[repo] == "ok", repo
        if RECIPE_MODELS[repo]:
            assert "gated" in no_token[repo] and repo in no_token[repo] and "HF_TOKEN" in no_token[repo], no_token[repo]
        else:
            assert no_token[repo] == "ok", no_token[repo]
