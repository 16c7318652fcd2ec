"""`llmkit download RECIPE_DIR [--eval]` / `llmkit download REPO_ID`: fetch what a recipe (and its
eval suite) names into the HF cache, so that nodes without internet run it with
HF_HUB_OFFLINE=1. Errors go through llmkit.hub.explain (one line with the repo and the fix)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError
from llmkit.hub import check_repo, explain, offline

# ============================================================================ llmkit download
#
#   llmkit download RECIPE_DIR [--eval]      every model, tokenizer and dataset the recipe names
#   llmkit download REPO_ID [--repo_type model|dataset] [--revision REV] [--name CONFIG]
#
# so that a node without internet runs the recipe with HF_HUB_OFFLINE=1 afterwards.  Models go
# through ``snapshot_download`` (config, tokenizer and weights only); datasets through the same
# ``datasets.load_dataset`` call the stage or eval task makes, so the datasets cache holds exactly
# what offline loading looks up.  Every repo is checked (exists, readable, revision) before
# anything is fetched: a bad id is one error and nothing is written.

MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "tokenizer*"]
TOKENIZER_FILES = ["config.json", "tokenizer*", "special_tokens_map.json", "*.model", "*.tiktoken", "vocab*",
                   "merges.txt", "*.jinja", "added_tokens.json"]
BIN_WEIGHTS = ["pytorch_model*.bin", "pytorch_model*.bin.index.json"]
_MODEL_KEYS = {"model_name_or_path": "model", "tokenizer_name_or_path": "tokenizer", "reward_model_path": "model",
               "ref_model_name_or_path": "model"}


def _is_hub_id(value: str, root: Path) -> bool:
    """A ``namespace/name`` hub id, not a local path or a run directory."""
    if not value or value.startswith((".", "/", "~")) or value.startswith("runs/") or value.count("/") != 1:
        return False
    return not (Path(value).exists() or (root / value).exists())


def plan(recipe: str | Path, eval_suite: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """What ``download`` fetches for a recipe: one dict per repo and load call (kind model,
    tokenizer or dataset; repo, revision, the load arguments, which files/keys name it), and
    notes on what is skipped (local paths, run directories)."""
    root = Path(recipe)
    files = _recipe_files(root)
    items: dict[tuple, dict[str, Any]] = {}
    notes: list[str] = []

    def add(kind: str, repo: str, where: str, revision: str | None = None, load: dict | None = None) -> None:
        key = (kind, repo, revision, json.dumps(load, sort_keys=True, default=str))
        item = items.setdefault(key, {"kind": kind, "repo": repo, "revision": revision or "main", "load": load,
                                      "used_by": []})
        item["used_by"].append(where)

    for f in files:
        _stage_items(f, add, notes)
    if eval_suite:
        _eval_suite_items(root, add, notes)
    return list(items.values()), notes


def _recipe_files(root: Path) -> list[Path]:
    """The recipe's stage YAMLs (pipeline.yaml's stages, then the alternatives a user may run
    instead of a listed stage: sft_qlora.yaml, sft_full.yaml)."""
    import yaml

    if not root.is_dir():
        raise LlmkitError(f"{root}: not a recipe directory (a folder with pipeline.yaml and one YAML per stage)")
    pipe = root / "pipeline.yaml"
    if not pipe.is_file():
        raise LlmkitError(f"{root} has no pipeline.yaml: not a recipe (see recipes/tiny-es)")
    stages = (yaml.safe_load(pipe.read_text(encoding="utf-8")) or {}).get("stages") or []
    files = [root / f"{s}.yaml" for s in stages]
    for f in files:
        if not f.is_file():
            raise LlmkitError(f"{pipe}: stage {f.stem!r} has no {f.name} in {root}")
    return files + sorted(p for p in root.glob("*.yaml") if p not in files and p.name not in ("pipeline.yaml", "eval.yaml"))


def _stage_items(f: Path, add, notes: list[str]) -> None:
    """The hub models, tokenizers and datasets one stage YAML names."""
    import yaml

    from llmkit.data import _is_local

    cfg = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    rev = cfg.get("model_revision") or cfg.get("revision")
    for key, kind in _MODEL_KEYS.items():
        value = cfg.get(key)
        if not isinstance(value, str) or not value:
            continue
        if _is_hub_id(value, Path.cwd()):
            add(kind, value, f"{f.name}:{key}", rev)
        else:
            notes.append(f"{f.name}:{key}: {value} is a local path or run directory, not fetched")
    for key in ("datasets", "eval_datasets"):
        for spec in cfg.get(key) or []:
            spec = {"path": spec} if isinstance(spec, str) else dict(spec)
            path = str(spec.get("path", ""))
            if _is_local(spec) or not _is_hub_id(path, Path.cwd()):
                notes.append(f"{f.name}:{key}: {path} is a local file, not fetched")
                continue
            # the call llmkit.data.load_source makes
            load = {"path": path, "name": spec.get("name"), "split": spec.get("split", "train"),
                    "data_files": spec.get("data_files")}
            add("dataset", path, f"{f.name}:{key}", None, load)  # load_source passes no revision


def _eval_suite_items(root: Path, add, notes: list[str]) -> None:
    """The hub datasets of the tasks the recipe's eval.yaml names (--eval), and any hub model it names."""
    import yaml

    ev = root / "eval.yaml"
    if not ev.is_file():
        raise LlmkitError(f"{root} has no eval.yaml, which --eval reads (see recipes/tiny-es/eval.yaml)")
    ecfg = yaml.safe_load(ev.read_text(encoding="utf-8")) or {}
    if ecfg.get("data_dir"):
        notes.append(f"eval.yaml: data_dir {ecfg['data_dir']}: the tasks read local copies, nothing fetched")
    else:
        for it in eval_items(str(ecfg.get("tasks", "es"))):
            add(**it)
    for key, kind in _MODEL_KEYS.items():
        if isinstance(ecfg.get(key), str) and _is_hub_id(ecfg[key], Path.cwd()):
            add(kind, ecfg[key], f"eval.yaml:{key}")


def eval_items(tasks: str) -> list[dict[str, Any]]:
    """The hub datasets of the eval tasks ``tasks`` names (groups or tasks), as ``plan`` items."""
    from llmkit.evaluation import suite

    out = []
    for name in suite.resolve_tasks(tasks):
        src = suite.HUB_SOURCES.get(name)
        if src is None:
            continue  # local only (mldoc_es)
        out.append({"kind": "dataset", "repo": src.repo, "where": f"eval task {name}", "revision": src.revision,
                    "load": {"eval_task": name}})
    return out


def _check(item: dict[str, Any]) -> None:
    repo_type = "dataset" if item["kind"] == "dataset" else "model"
    rev = item["revision"]
    check_repo(item["repo"], repo_type, None if rev == "main" else rev)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def _fetch(item: dict[str, Any]) -> tuple[str, int]:
    """Fetch one item; returns (resolved revision, bytes on disk)."""
    import huggingface_hub as hf

    rev = None if item["revision"] == "main" else item["revision"]
    if item["kind"] in ("model", "tokenizer"):
        patterns = list(MODEL_FILES if item["kind"] == "model" else TOKENIZER_FILES)
        if item["kind"] == "model":
            names = [s.rfilename for s in (hf.HfApi().model_info(item["repo"], revision=rev).siblings or [])]
            if not any(n.endswith(".safetensors") for n in names):
                patterns += BIN_WEIGHTS  # only .bin weights published
        try:
            path = hf.snapshot_download(item["repo"], revision=rev, allow_patterns=patterns)
        except Exception as exc:
            raise explain(exc, item["repo"], "model", rev) from None
        return Path(path).name, _dir_size(Path(path))
    import datasets

    load = dict(item["load"] or {"path": item["repo"]})
    task = load.pop("eval_task", None)
    if task:  # the eval task's own loader: the same call, files and checks as `llmkit eval`
        from llmkit.evaluation import suite

        ds = suite.load_hub_dataset(task, suite.TASKS[task].splits)
    else:
        try:
            ds = datasets.load_dataset(load.pop("path"), load.pop("name", None),
                                       **{k: v for k, v in load.items() if v is not None})
        except Exception as exc:
            raise explain(exc, item["repo"], "dataset", rev) from None
    parts = ds.values() if isinstance(ds, dict) else [ds]
    size = sum(os.path.getsize(f["filename"]) for d in parts for f in d.cache_files if os.path.exists(f["filename"]))
    try:
        sha = hf.HfApi().dataset_info(item["repo"], revision=rev).sha or item["revision"]
    except Exception:
        sha = item["revision"]
    return sha, size


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def download(recipe: str, eval_suite: bool = False, items: list[dict[str, Any]] | None = None,
             stream=None) -> list[dict[str, Any]]:
    """Fetch every model, tokenizer and dataset the recipe (and with ``eval_suite`` its
    eval.yaml's tasks) names into the HF cache.  Returns one row per item: repo, kind, revision
    (the commit), size (bytes on disk), used_by.  Raises LlmkitError, before anything is
    fetched, for a repo that does not exist, is gated without a token, lacks the revision, or
    when offline mode is on (then it only reports what is missing from the cache)."""
    import sys

    from tqdm.auto import tqdm

    stream = stream or sys.stderr
    notes: list[str] = []
    if items is None:
        items, notes = plan(recipe, eval_suite)
    for note in notes:
        print(f"llmkit: {note}", file=stream)
    if not items:
        print("llmkit: nothing to download (every model and dataset is local)", file=stream)
        return []
    if offline():
        _check_cached(items)
        print(f"llmkit: offline mode: all {len(items)} model(s)/dataset(s) are in the cache", file=stream)
        return [{"repo": i["repo"], "kind": i["kind"], "revision": i["revision"], "size": None,
                 "used_by": i["used_by"]} for i in items]
    for item in items:  # everything checked before anything is written
        try:
            _check(item)
        except LlmkitError as exc:
            raise LlmkitError(f"{exc} (named by {', '.join(item['used_by'])})") from None
    rows = []
    bar = tqdm(items, desc="llmkit download", unit="repo", file=stream)
    for item in bar:
        bar.set_postfix_str(f"{item['kind']} {item['repo']}")
        sha, size = _fetch(item)
        rows.append({"repo": item["repo"], "kind": item["kind"], "revision": sha, "size": size,
                     "used_by": item["used_by"]})
    bar.close()
    print(summary_table(rows), file=stream)
    return rows


def _check_cached(items: list[dict[str, Any]]) -> None:
    """Offline: every item must already be in the cache (the same load calls, offline)."""
    import huggingface_hub as hf

    for item in items:
        rev = None if item["revision"] == "main" else item["revision"]
        try:
            if item["kind"] in ("model", "tokenizer"):
                probe = "config.json" if item["kind"] == "model" else "tokenizer_config.json"
                if not isinstance(hf.try_to_load_from_cache(item["repo"], probe, revision=rev), str):
                    raise explain(hf.errors.OfflineModeIsEnabled("offline"), item["repo"], "model", rev)
            else:
                _fetch(item)  # datasets' offline load raises if the prepared cache is not there
        except LlmkitError as exc:
            raise LlmkitError(f"{exc} (named by {', '.join(item['used_by'])})") from None


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = ("repo", "kind", "revision", "size on disk")
    body = [(r["repo"], r["kind"], str(r["revision"])[:12], human_size(r["size"]) if r["size"] is not None else "-")
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    total = sum(r["size"] or 0 for r in rows)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*b) for b in body),
             f"{len(rows)} repo(s), {human_size(total)} in {os.environ.get('HF_HOME', '~/.cache/huggingface')}; "
             "on a node without internet set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"]
    return "\n".join(lines)


def download_command(argv: list[str]) -> int:
    """``llmkit download RECIPE_DIR [--eval]`` or ``llmkit download REPO_ID [--repo_type ...]``."""
    import argparse

    p = argparse.ArgumentParser(prog="llmkit download", description=(
        "Fetch every model, tokenizer and dataset a recipe names (with --eval, also its eval.yaml's tasks) into "
        "the HF cache, so the recipe runs with HF_HUB_OFFLINE=1 on nodes without internet. Or one hub repo."))
    p.add_argument("target", help="a recipe directory, or a hub repo id")
    p.add_argument("--eval", dest="eval_suite", action="store_true", help="also the datasets of eval.yaml's tasks")
    p.add_argument("--repo_type", choices=("model", "dataset"), default=None,
                   help="for a repo id: model or dataset (default: dataset unless it is a model)")
    p.add_argument("--revision", default=None, help="for a repo id: branch, tag or commit")
    p.add_argument("--name", default=None, help="for a dataset id: the config name")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            raise LlmkitError("usage: llmkit download RECIPE_DIR [--eval] | REPO_ID [--repo_type model|dataset] "
                              "[--revision REV] [--name CONFIG]") from None
        return 0
    target = args.target
    if Path(target).is_dir():
        download(target, args.eval_suite)
        return 0
    if not _is_hub_id(target, Path.cwd()):
        raise LlmkitError(f"{target}: neither a recipe directory nor a hub id (namespace/name)")
    download(target, items=repo_items(target, args.repo_type, args.revision, args.name))
    return 0


def repo_items(repo: str, repo_type: str | None = None, revision: str | None = None,
               name: str | None = None) -> list[dict[str, Any]]:
    """``plan`` items for one repo id: a model; or a dataset, loaded as each eval task that reads
    it loads it (else ``load_dataset(repo, name)``)."""
    if repo_type == "model":
        return [{"kind": "model", "repo": repo, "revision": revision or "main", "load": None, "used_by": ["command line"]}]
    from llmkit.evaluation import suite

    items = [{"kind": "dataset", "repo": repo, "revision": src.revision, "used_by": [f"eval task {t}"],
              "load": {"eval_task": t}}
             for t, src in suite.HUB_SOURCES.items() if src.repo == repo and revision in (None, src.revision)
             and name in (None, src.name)]
    return items or [{"kind": "dataset", "repo": repo, "revision": revision or "main", "used_by": ["command line"],
                      "load": {"path": repo, "name": name, "revision": revision}}]
