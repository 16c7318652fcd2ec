"""The Spanish evaluation suite: which lm-eval tasks, where their data lives, what to report.

Two groups (``es`` is both):

- ``es_beto``: the tasks BETO and MarIA were evaluated on.  XNLI and PAWS-X are the harness's
  own ``*_spanish_bench`` tasks; CoNLL-2002 NER, SQAC, STS-es and MLDoc are llmkit's, defined
  in ``llmkit/evaluation/tasks/`` (YAML + ``utils.py``).
- ``es_llm``: the harness's Spanish LLM tasks, used as the harness defines them.

Every task records the splits it reads (the split it is scored on first, then the split its
few-shot examples come from when that is another one), the chance level of each metric
(uniform random guessing: 1/3 for 3-way XNLI, 0 for generative F1/EM, correlations and MCC)
and the primary metric, whose key in lm-eval's results is ``EvalTask.result_key``.

Where the data comes from is decided here, never in a fork of the harness:

- From the hub (default): ``task_spec(name)`` returns the harness's resolved config with the
  data source replaced by ``HUB_SOURCES[name]``: a namespaced repo id (lm-eval 0.4.13 names
  ``xnli`` and ``paws-x``, which huggingface_hub >= 1.31 rejects), a pinned revision, the
  parquet conversion (``refs/convert/parquet``) or a maintained copy where the original was
  published with a loading script (datasets >= 4 runs none), and raw files read with a builder
  where that is all there is (SQAC's nested JSON, flattened by the task's ``process_docs``).
  The data is loaded by ``load_hub_dataset`` (lm-eval's ``custom_dataset`` hook): the same
  ``datasets.load_dataset`` call the harness makes, then a check that the splits and columns
  the task reads are there, and any hub error as one line naming the repo and the fix
  (``llmkit.hub.explain``).
- From local copies: ``task_spec(name, data_dir)`` points a task at JSON-lines files,
  ``<data_dir>/<task>/<split>.jsonl`` in the original dataset's schema, and changes nothing
  else in the harness's definition.  ``LLMKIT_EVAL_DATA_DIR`` is the default ``data_dir``.
  ``mldoc_es`` has no hub copy (its licence forbids redistribution) and always needs one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DATA_DIR_ENV = "LLMKIT_EVAL_DATA_DIR"
SCHEMA_ROWS = 5  # rows of each local file that check_local_schema reads

# Column type names for the schema check ("?" suffix: null allowed).
_TYPES = {"str": str, "int": int, "number": (int, float), "list": list, "dict": dict}


@dataclass(frozen=True)
class EvalTask:
    name: str  # the harness's task name
    group: str  # es_beto | es_llm
    hub: str | None  # hub dataset id (None: local only)
    hub_config: str | None
    splits: tuple[str, ...]  # scored split first, then the few-shot split if it is another one
    primary: str  # primary metric
    chance: dict[str, float]  # metric -> chance level
    columns: dict[str, str]  # columns the task uses -> type ("str", "int", "number", "list", "dict"; "?" = nullable)
    filter: str = "none"  # lm-eval filter whose result is the primary one
    local_only: bool = False

    @property
    def result_key(self) -> str:
        """Key of the primary metric in lm-eval's per-task results, e.g. ``"acc,none"``."""
        return f"{self.primary},{self.filter}"


FLORES_LANGS = {"es": "spa_Latn", "en": "eng_Latn", "eu": "eus_Latn", "pt": "por_Latn", "it": "ita_Latn",
                "fr": "fra_Latn", "ca": "cat_Latn", "gl": "glg_Latn", "de": "deu_Latn"}
FLORES_PAIRS = ("en", "eu", "pt", "it", "fr", "ca", "gl", "de")  # the harness's flores_es group, order kept
GLOBAL_MMLU_CATEGORIES = ("business", "humanities", "medical", "other", "stem", "social_sciences")
_STORY = {f"input_sentence_{i}": "str" for i in range(1, 5)}
_BELEBELE = {f"mc_answer{i}": "str" for i in range(1, 5)}

TASKS: dict[str, EvalTask] = {
    t.name: t
    for t in [
        # ---- es_beto
        EvalTask("xnli_es_spanish_bench", "es_beto", "facebook/xnli", "es", ("validation",), "acc", {"acc": 1 / 3},
            {"premise": "str", "hypothesis": "str", "label": "int"}),
        EvalTask("paws_es_spanish_bench", "es_beto", "google-research-datasets/paws-x", "es", ("test", "train"), "acc", {"acc": 0.5},
            {"sentence1": "str", "sentence2": "str", "label": "int"}),
        EvalTask("conll2002_es", "es_beto", "eriktks/conll2002", "es", ("test", "train"), "f1",
            {"f1": 0.0, "precision": 0.0, "recall": 0.0}, {"tokens": "list", "ner_tags": "list"}),
        EvalTask("sqac_es", "es_beto", "PlanTL-GOB-ES/SQAC", None, ("test", "train"), "f1", {"f1": 0.0, "exact_match": 0.0},
            {"context": "str", "question": "str", "answers": "dict"}),  # local copies flat; the hub's JSON is nested
        EvalTask("sts_es", "es_beto", "mteb/STSES", None, ("test",), "pearson",
            {"pearson": 0.0, "spearman": 0.0}, {"sentence1": "str", "sentence2": "str", "score": "number"}),
        EvalTask("mldoc_es", "es_beto", None, None, ("test", "train"), "acc", {"acc": 0.25, "acc_norm": 0.25},
            {"text": "str", "label": "str"}, local_only=True),
        # ---- es_llm
        EvalTask("xquad_es", "es_llm", "google/xquad", "xquad.es", ("validation",), "f1", {"f1": 0.0, "exact_match": 0.0},
            {"context": "str", "question": "str", "answers": "dict"}),
        EvalTask("mgsm_direct_es_spanish_bench", "es_llm", "juletxara/mgsm", "es", ("test", "train"), "exact_match",
            {"exact_match": 0.0}, {"question": "str", "answer": "str?", "answer_number": "int"}, filter="flexible-extract"),
        EvalTask("copa_es", "es_llm", "BSC-LT/COPA-es", None, ("test", "validation"), "acc", {"acc": 0.5},
            {"premise": "str", "choice1": "str", "choice2": "str", "question": "str", "label": "int"}),
        EvalTask("xstorycloze_es", "es_llm", "juletxara/xstory_cloze", "es", ("eval", "train"), "acc", {"acc": 0.5},
            {**_STORY, "sentence_quiz1": "str", "sentence_quiz2": "str", "answer_right_ending": "int"}),
        EvalTask("belebele_spa_Latn", "es_llm", "facebook/belebele", "spa_Latn", ("test",), "acc", {"acc": 0.25, "acc_norm": 0.25},
            {"flores_passage": "str", "question": "str", **_BELEBELE, "correct_answer_num": "str"}),
        EvalTask("openbookqa_es", "es_llm", "BSC-LT/openbookqa-es", None, ("test", "validation"), "acc",
            {"acc": 0.25, "acc_norm": 0.25}, {"question_stem": "str", "choices": "dict", "answerKey": "str"}),
        EvalTask("escola", "es_llm", "nbel/EsCoLA", None, ("validation", "train"), "mcc", {"mcc": 0.0, "acc": 0.5},
            {"Sentence": "str", "Label": "int"}),
        EvalTask("wnli_es", "es_llm", "PlanTL-GOB-ES/wnli-es", None, ("validation", "train"), "acc", {"acc": 0.5},
            {"sentence1": "str", "sentence2": "str", "label": "int"}),
        # ---- es_gen: the rest of the harness's spanish_bench, generation scored locally
        # (BLEU/TER/chrF by sacrebleu, ROUGE-1 by rouge_score; BLEU, TER and chrF on lm-eval's 0-100 scale)
        EvalTask("xlsum_es", "es_gen", "csebuetnlp/xlsum", "spanish", ("test", "train"), "rouge1",
            {"rouge1": 0.0, "bleu": 0.0}, {"text": "str", "summary": "str"}),
        EvalTask("cocoteros_es", "es_gen", "gplsi/cocoteros", None, ("test", "train"), "bleu",
            {"bleu": 0.0, "rouge1": 0.0}, {"keywords": "str", "context": "str", "text": "str"}),
        *[EvalTask(f"phrases_{pair}", "es_gen", "gplsi/ES-VA_translation_test", None, ("test",), "bleu",
                   {"bleu": 0.0, "chrf": 0.0}, {"es": "str", "va": "str"}) for pair in ("es-va", "va-es")],
        # EQ-Bench v2 full-scale score, parsed from the answer (no judge model); the harness's
        # constant makes random answers score 0
        EvalTask("eqbench_es", "es_gen", "BSC-LT/EQ-bench_es", None, ("test",), "eqbench",
            {"eqbench": 0.0, "percent_parseable": 0.0}, {"prompt": "str", "reference_answer_fullscale": "str"}),
        *[EvalTask(f"spanish_bench_flores_{a}-{b}", "es_gen", "facebook/flores", "all", ("devtest", "dev"), "bleu",
                   {"bleu": 0.0, "chrf": 0.0}, {f"sentence_{FLORES_LANGS[a]}": "str", f"sentence_{FLORES_LANGS[b]}": "str"})
          for x in FLORES_PAIRS for a, b in ((x, "es"), ("es", x))],
        # ---- es_mmlu: Global-MMLU Lite, Spanish (the harness's global_mmlu_es, one task per category)
        *[EvalTask(f"global_mmlu_es_{cat}", "es_mmlu", "CohereLabs/Global-MMLU-Lite", "es", ("test", "dev"), "acc",
                   {"acc": 0.25}, {"question": "str", **{f"option_{o}": "str" for o in "abcd"}, "answer": "str",
                                   "subject_category": "str"}) for cat in GLOBAL_MMLU_CATEGORIES],
    ]
}


@dataclass(frozen=True)
class HubSource:
    """Where a task's data is on the hub, and how ``datasets`` 5 loads it.

    ``load_dataset(path, name, revision=revision, data_files=data_files, field=field)``; for raw
    files read by a builder (``path`` "json"/"csv") ``data_files`` are ``hf://`` URLs with the
    revision in them.  ``columns``: the raw columns checked after loading (default: the task's).
    ``licence``/``checked`` go to
    docs/evaluation.md: the licence on the card, and how the layout was verified."""

    repo: str  # the hub repo the files are in
    path: str  # dataset_path for load_dataset: the repo id, or a builder name
    name: str | None = None
    revision: str | None = "main"
    data_files: dict[str, str] | None = None
    field: str | None = None
    columns: dict[str, str] | None = None
    licence: str = "see the card"
    checked: str = "assumed"

    def load_args(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"path": self.path, "name": self.name}
        if self.path == self.repo and self.revision:
            kw["revision"] = self.revision
        if self.data_files:
            kw["data_files"] = dict(self.data_files)
        if self.field:
            kw["field"] = self.field
        return kw


def _hf(repo: str, revision: str, path: str) -> str:
    return f"hf://datasets/{repo}@{revision.replace('/', '%2F')}/{path}"


PARQUET = "refs/convert/parquet"  # the hub's parquet conversion of a repo (written by the dataset viewer)
MTEB_STSES_REV = "fe7158e70012087b5a692ce175226a0d213936ad"  # the revision mteb pins for its STSES task
_SQAC = "PlanTL-GOB-ES/SQAC"
_WNLI = "PlanTL-GOB-ES/wnli-es"

HUB_SOURCES: dict[str, HubSource] = {
    "xnli_es_spanish_bench": HubSource(
        "facebook/xnli", "facebook/xnli", "es", licence="CC BY-NC 4.0 (XNLI release; not on the card)",
        checked="card (dataset_info: config es, premise/hypothesis string, label ClassLabel "
                "entailment/neutral/contradiction; 'Add ... data files' commits); file names es/<split>-*.parquet assumed"),
    "paws_es_spanish_bench": HubSource(
        "google-research-datasets/paws-x", "google-research-datasets/paws-x", "es",
        licence="other (card)",
        checked="card (dataset_info: config es, id int32, sentence1/sentence2 string, label ClassLabel 0/1, "
                "train/test/validation); file names es/<split>-*.parquet assumed"),
    "conll2002_es": HubSource(
        "eriktks/conll2002", "eriktks/conll2002", "es", licence="unknown (the conll2002 card)",
        checked="named in issue 11 as a loadable copy; columns id/tokens/pos_tags/ner_tags (ClassLabel, "
                "the conll2002 script's features) and es/<split>-*.parquet assumed"),
    "sqac_es": HubSource(
        _SQAC, "json", None, data_files={s: _hf(_SQAC, "main", f"{s}.json") for s in ("train", "test")},
        field="data", columns={"paragraphs": "list"}, licence="CC BY-SA 4.0 (assumed)",
        checked="issue 11: raw SQuAD-style nested JSON (field data) beside a loading script; file names "
                "train.json/dev.json/test.json assumed"),
    "sts_es": HubSource(
        "mteb/STSES", "mteb/STSES", None, revision=MTEB_STSES_REV,
        licence="CC BY 4.0 (mteb's task metadata)",
        checked="mteb's STSES task (path, revision, test split only, licence cc-by-4.0); columns "
                "sentence1/sentence2/score are mteb's STS convention, assumed"),
    "xquad_es": HubSource(
        "google/xquad", "google/xquad", "xquad.es", licence="CC BY-SA 4.0 (assumed)",
        checked="lm-eval YAML (google/xquad, xquad.es, validation); parquet layout assumed"),
    "mgsm_direct_es_spanish_bench": HubSource(
        "juletxara/mgsm", "juletxara/mgsm", None, revision=PARQUET,
        data_files={"train": "es/train/*.parquet", "test": "es/test/*.parquet"}, licence="CC BY-SA 4.0 (assumed)",
        checked="lm-eval YAML (juletxara/mgsm, es); a loading script on main and the viewer's "
                "es/<split>/0000.parquet conversion assumed, not verified"),
    "copa_es": HubSource(
        "BSC-LT/COPA-es", "BSC-LT/COPA-es", None, licence="CC BY 4.0 (assumed)",
        checked="lm-eval YAML (BSC-LT/COPA-es, validation/test); issue 11: the hub has id (not idx); "
                "file layout assumed"),
    "xstorycloze_es": HubSource(
        "juletxara/xstory_cloze", "juletxara/xstory_cloze", None, revision=PARQUET,
        data_files={"train": "es/train/*.parquet", "eval": "es/eval/*.parquet"},
        licence="CC BY 4.0 (XStoryCloze release, assumed for this copy)",
        checked="lm-eval YAML (juletxara/xstory_cloze, es, train/eval); a loading script on main and the "
                "viewer's es/<split>/0000.parquet conversion assumed, not verified"),
    "belebele_spa_Latn": HubSource(
        "facebook/belebele", "facebook/belebele", "spa_Latn", licence="CC BY-SA 4.0 (assumed)",
        checked="lm-eval YAML (facebook/belebele, spa_Latn, test); data/spa_Latn.jsonl layout assumed"),
    "openbookqa_es": HubSource(
        "BSC-LT/openbookqa-es", "BSC-LT/openbookqa-es", None, licence="CC BY 4.0 (assumed)",
        checked="lm-eval YAML (BSC-LT/openbookqa-es, validation/test); file layout assumed"),
    "escola": HubSource(
        "nbel/EsCoLA", "nbel/EsCoLA", None, licence="CC BY-NC-SA 4.0 (card front matter; its text says CC BY 4.0)",
        checked="card (licence; tab-separated files, train/dev public, test not); lm-eval YAML (Sentence, Label); "
                "file names and header assumed"),
    "wnli_es": HubSource(
        _WNLI, "csv", None,
        data_files={"train": _hf(_WNLI, "main", "wnli-train-es.csv"),
                    "validation": _hf(_WNLI, "main", "wnli-dev-es.csv")}, licence="CC BY 4.0 (assumed)",
        checked="lm-eval YAML (csv files wnli-train-es.csv, wnli-dev-es.csv); columns sentence1/sentence2/label assumed"),
}

_FLORES_HUB_REV = PARQUET
HUB_SOURCES.update({
    "xlsum_es": HubSource(
        "csebuetnlp/xlsum", "csebuetnlp/xlsum", None, revision=PARQUET,
        data_files={s: f"spanish/{s}/*.parquet" for s in ("train", "test")}, licence="CC BY-NC-SA 4.0 (assumed)",
        checked="lm-eval YAML (csebuetnlp/xlsum, spanish, test/train); a loading script on main and the viewer's "
                "spanish/<split>/*.parquet conversion assumed, not verified"),
    "cocoteros_es": HubSource(
        "gplsi/cocoteros", "gplsi/cocoteros", None, licence="see the card (none stated)",
        checked="hub pages (commit history: cocoteros_train.tsv and cocoteros_test.tsv; viewer: config default, "
                "train 3.88k / test 969 rows); columns keywords/context/text from the lm-eval YAML, keywords as text assumed"),
    **{f"phrases_{pair}": HubSource(
        "gplsi/ES-VA_translation_test", "gplsi/ES-VA_translation_test", None, licence="see the card",
        checked="lm-eval YAML (gplsi/ES-VA_translation_test, test only, columns es/va); file layout assumed")
       for pair in ("es-va", "va-es")},
    "eqbench_es": HubSource(
        "BSC-LT/EQ-bench_es", "BSC-LT/EQ-bench_es", None, licence="see the card",
        checked="lm-eval YAML (BSC-LT/EQ-bench_es, split test, columns prompt/reference_answer_fullscale, a "
                "Python dict literal parsed by the task); file layout assumed"),
    **{name: HubSource(
        "facebook/flores", "facebook/flores", None, revision=_FLORES_HUB_REV,
        data_files={s: f"all/{s}/*.parquet" for s in ("dev", "devtest")}, licence="CC BY-SA 4.0 (FLORES-200)",
        checked="lm-eval YAML (facebook/flores, config all, dev/devtest, columns sentence_<lang>_<script>); a "
                "loading script on main and the viewer's all/<split>/*.parquet conversion assumed, not verified")
       for name in TASKS if name.startswith("spanish_bench_flores_")},
    **{name: HubSource(
        "CohereLabs/Global-MMLU-Lite", "CohereLabs/Global-MMLU-Lite", "es", licence="Apache 2.0 (assumed)",
        checked="lm-eval YAML (CohereLabs/Global-MMLU-Lite, es, test/dev, option_a..d, answer letter, "
                "subject_category filtered by the task); parquet layout assumed")
       for name in TASKS if name.startswith("global_mmlu_es_")},
})

GROUPS: dict[str, list[str]] = {
    "es_beto": [n for n, t in TASKS.items() if t.group == "es_beto"],
    "es_llm": [n for n, t in TASKS.items() if t.group == "es_llm"],
    "es_gen": [n for n, t in TASKS.items() if t.group == "es_gen"],
    "es_mmlu": [n for n, t in TASKS.items() if t.group == "es_mmlu"],
}
GROUPS["es"] = GROUPS["es_beto"] + GROUPS["es_llm"]  # the suite of llmkit <= 0.x: BETO's tasks and the LLM tasks
GROUPS["flores_es"] = [n for n in TASKS if n.startswith("spanish_bench_flores_")]
GROUPS["phrases_es"] = ["phrases_es-va", "phrases_va-es"]
GROUPS["global_mmlu_es"] = GROUPS["es_mmlu"]
# the harness's spanish_bench group, as lm-eval 0.4.13 lists it (groups expanded)
GROUPS["spanish_bench"] = [
    "belebele_spa_Latn", "copa_es", "escola", "openbookqa_es", "wnli_es", "xnli_es_spanish_bench", "xstorycloze_es",
    "xquad_es", "xlsum_es", "paws_es_spanish_bench", "mgsm_direct_es_spanish_bench", "eqbench_es",
    *GROUPS["flores_es"], *GROUPS["phrases_es"], "cocoteros_es"]
GROUPS["es_all"] = list(TASKS)

MLDOC_HELP = (
    "mldoc_es has no copy on the hub: MLDoc is built from the Reuters RCV1/RCV2 corpora, whose licence does "
    "not allow redistribution. Get RCV2 (Spanish) from NIST under its agreement, build the Spanish MLDoc splits "
    "with the MLDoc scripts (github.com/facebookresearch/MLDoc), write them as JSON lines with columns "
    "'text' and 'label' (CCAT, ECAT, GCAT or MCAT) to <data_dir>/mldoc_es/train.jsonl and test.jsonl "
    f"(dev -> validation.jsonl, unused), then pass that data_dir or set {DATA_DIR_ENV}=<data_dir>"
)


def _valid_names() -> str:
    return f"groups: {', '.join(sorted(GROUPS))}; tasks: {', '.join(TASKS)}"


def get_task(name: str) -> EvalTask:
    if name not in TASKS:
        raise LlmkitError(f"unknown eval task {name!r}; {_valid_names()}")
    return TASKS[name]


def resolve_tasks(spec: str) -> list[str]:
    """``"es_beto,xquad_es"`` -> task names in suite order of appearance, without duplicates."""
    names: list[str] = []
    unknown: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in GROUPS:
            names.extend(GROUPS[part])
        elif part in TASKS:
            names.append(part)
        else:
            unknown.append(part)
    if unknown:
        raise LlmkitError(f"unknown eval task or group {', '.join(map(repr, unknown))}; {_valid_names()}")
    if not names:
        raise LlmkitError(f"no eval tasks given; {_valid_names()}")
    return list(dict.fromkeys(names))


@functools.cache
def task_manager():
    """lm-eval's TaskManager over its built-in tasks plus llmkit's (indexing takes a few seconds; cached)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def splits_read(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The splits a resolved task config makes the harness read, following ConfigurableTask:
    scored on test (else validation); few-shot from fewshot_split (else train, validation, test)."""
    scored = cfg.get("test_split") or cfg.get("validation_split")
    fewshot_cfg = cfg.get("fewshot_config") or {}
    fewshot = (
        cfg.get("fewshot_split")
        or fewshot_cfg.get("split")
        or cfg.get("training_split")
        or cfg.get("validation_split")
        or cfg.get("test_split")
    )
    return tuple(dict.fromkeys(s for s in (scored, fewshot) if s))


def default_data_dir(data_dir: str | Path | None = None) -> Path | None:
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    return Path(data_dir) if data_dir else None


def local_files(name: str, data_dir: str | Path) -> dict[str, Path]:
    """``{split: <data_dir>/<name>/<split>.jsonl}`` for the splits the task reads."""
    return {split: Path(data_dir) / name / f"{split}.jsonl" for split in get_task(name).splits}


def task_config(name: str, tm=None) -> dict[str, Any]:
    """The harness's full resolved config for a task (includes merged, ``!function`` resolved)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    get_task(name)
    entry = (tm or task_manager()).task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise LlmkitError(f"lm-eval does not know the task {name!r} (is lm_eval 0.4.13 installed?)")
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    _local_rouge(cfg)
    return cfg


def _local_rouge(cfg: dict[str, Any]) -> None:
    """Replace spanish_bench's ROUGE-1 aggregation (``evaluate.load("rouge")``, a script fetched
    from the hub when the task is scored) by llmkit's local one (tasks/utils.py)."""
    from llmkit.evaluation.tasks import utils as task_utils

    for metric in cfg.get("metric_list") or []:
        agg = metric.get("aggregation")
        if callable(agg) and getattr(agg, "__name__", "") == "rouge1_agg" and agg is not task_utils.rouge1_agg:
            metric["aggregation"] = task_utils.rouge1_agg


def task_spec(name: str, data_dir: str | Path | None = None, tm=None) -> dict[str, Any]:
    """What to hand to ``TaskManager.load`` for one task: the harness's full resolved config
    with only the data source replaced.

    Without a data directory (argument or ``LLMKIT_EVAL_DATA_DIR``): the task's ``HUB_SOURCES``
    entry, loaded by ``load_hub_dataset``.  With one: the local JSON-lines files of the splits
    the task reads, after checking that they exist and have the columns the task uses.
    """
    info = get_task(name)
    root = default_data_dir(data_dir)
    if root is None:
        if info.local_only:
            raise LlmkitError(MLDOC_HELP if name == "mldoc_es" else f"{name} needs a local copy (data_dir)")
        return hub_spec(name, tm)
    files = local_files(name, root)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise LlmkitError(
            f"{name}: local data missing: {', '.join(missing)}. Write the {'/'.join(files)} split(s) there as JSON lines "
            f"in the schema of {info.hub or 'the original corpus'} (columns: {', '.join(info.columns)}), "
            f"or run without a data dir (unset {DATA_DIR_ENV}) to read the hub"
            + (f". {MLDOC_HELP}" if info.local_only else "")
        )
    check_local_schema(name, root)
    cfg = task_config(name, tm)
    _check_splits(name, cfg)
    # datasets' json builder infers the schema from the first split listed and casts the others
    # to it, so a column that is null throughout that split (mgsm's `answer` in test) would break
    # the next split: list the splits with the fewest all-null columns first.
    order = sorted(files, key=lambda split: _null_columns(files[split]))
    cfg["dataset_path"] = "json"
    cfg["dataset_name"] = None
    cfg["dataset_kwargs"] = {"data_files": {split: str(files[split]) for split in order}}
    return cfg


def _check_splits(name: str, cfg: dict[str, Any]) -> None:
    if splits_read(cfg) != get_task(name).splits:
        raise LlmkitError(
            f"{name}: the installed lm-eval reads splits {splits_read(cfg)}, llmkit's suite expects "
            f"{get_task(name).splits}; update llmkit/evaluation/suite.py for this lm-eval version"
        )


class _CustomDatasetNote(logging.Filter):
    """lm-eval warns, for every task with a ``custom_dataset``, that custom kwargs can be passed
    through ``--metadata``: true, and irrelevant for llmkit's loader, so that one line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in str(record.msg)


_NOTE_FILTER = _CustomDatasetNote()


def hub_spec(name: str, tm=None) -> dict[str, Any]:
    """The task's config reading ``HUB_SOURCES[name]`` (see the module docstring)."""
    logger = logging.getLogger("lm_eval.api.task")
    if _NOTE_FILTER not in logger.filters:
        logger.addFilter(_NOTE_FILTER)
    src = HUB_SOURCES[name]
    cfg = task_config(name, tm)
    _check_splits(name, cfg)
    args = src.load_args()
    cfg["dataset_path"] = args.pop("path")
    cfg["dataset_name"] = args.pop("name")
    cfg["dataset_kwargs"] = args
    cfg["custom_dataset"] = functools.partial(load_hub_dataset, name, splits_read(cfg))
    return cfg


def load_hub_dataset(name: str, splits: tuple[str, ...] = (), **_metadata):
    """``datasets.load_dataset`` of a task's hub source (lm-eval's ``custom_dataset`` hook; the
    harness passes its metadata, unused), then the splits and columns checked.  Any failure is
    one LlmkitError naming the task, the repo and the fix."""
    import datasets

    from llmkit import hub

    src = HUB_SOURCES[name]
    args = src.load_args()
    try:
        if src.data_files:
            args["path"], args["data_files"] = _cached_files(src)
            args.pop("revision", None)
        ds = datasets.load_dataset(args.pop("path"), args.pop("name"), **args)
    except Exception as exc:
        raise hub.explain(exc, src.repo, "dataset", src.revision, what=f"{name}: dataset") from None
    check_hub_schema(name, ds, splits or tuple(ds))
    return ds


_HF_URL = re.compile(r"^hf://datasets/(?P<repo>[^@]+)@(?P<rev>[^/]+)/(?P<file>.+)$")
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}


def _cached_files(src: HubSource) -> tuple[str, dict[str, list[str]]]:
    """A source with ``data_files`` (``hf://`` URLs, or patterns at a revision of the repo) as
    (builder, local paths in the hub cache), fetched with ``snapshot_download`` of just those
    files: the same bytes and builder ``datasets`` would use, and unlike ``hf://`` globbing or a
    data-files config hash (which ``datasets`` computes from the resolved remote URLs) it also
    loads offline once downloaded (``llmkit download``)."""
    import fnmatch
    import urllib.parse

    import huggingface_hub as hf

    patterns, revision = {}, src.revision
    for split, url in (src.data_files or {}).items():
        m = _HF_URL.match(url)
        if m:
            patterns[split], revision = m["file"], urllib.parse.unquote(m["rev"])
        else:
            patterns[split] = url
    root = Path(hf.snapshot_download(src.repo, repo_type="dataset", revision=None if revision == "main" else revision,
                                     allow_patterns=list(patterns.values())))
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    out = {split: [str(root / f) for f in files if fnmatch.fnmatch(f, pat)] for split, pat in patterns.items()}
    for split, found in out.items():
        if not found:
            raise LlmkitError(f"{src.repo}" + (f" at revision {revision}" if revision != "main" else "")
                              + f": no file matches {patterns[split]!r} (split {split})")
    builder = src.path if src.path != src.repo else _BUILDERS.get(Path(patterns[next(iter(patterns))]).suffix, "parquet")
    return builder, out


def check_hub_schema(name: str, ds, splits: tuple[str, ...]) -> None:
    """The splits the task reads are in ``ds`` (a DatasetDict) and their first rows have the
    columns the task uses, with the types it needs."""
    src = HUB_SOURCES[name]
    where = f"{name}: {src.repo}" + (f" ({src.name})" if src.name else "") + (
        f" at revision {src.revision}" if src.revision and src.revision != "main" else "")
    columns = src.columns or get_task(name).columns
    for split in splits:
        if split not in ds:
            raise LlmkitError(f"{where} has no split {split!r} (it has: {', '.join(ds) or 'none'}); the task reads "
                              f"{', '.join(splits)}")
        have = ds[split].column_names
        missing = [c for c in columns if c not in have]
        if missing:
            raise LlmkitError(f"{where}, split {split}: no column(s) {', '.join(missing)} (it has: {', '.join(have)}); "
                              f"the task reads {', '.join(columns)}")
        for i, row in enumerate(ds[split].select(range(min(SCHEMA_ROWS, len(ds[split]))))):
            bad = [f"{c} should be {t} (got {type(row[c]).__name__})" for c, t in columns.items() if not _type_ok(row[c], t)]
            if bad:
                raise LlmkitError(f"{where}, split {split}, row {i}: {'; '.join(bad)}")


def _read_rows(path: Path, n: int) -> list[tuple[int, Any]]:
    """(line number, parsed value) of the first ``n`` non-blank lines; LlmkitError on bad JSON."""
    rows = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise LlmkitError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if len(rows) >= n:
                break
    return rows


def _null_columns(path: Path, n: int = 100) -> int:
    """How many columns are null in every one of the first ``n`` rows of a JSON-lines file."""
    rows = [row for _, row in _read_rows(path, n) if isinstance(row, dict)]
    columns = {key for row in rows for key in row}
    return sum(all(row.get(key) is None for row in rows) for key in columns)


def _type_ok(value: Any, spec: str) -> bool:
    if value is None:
        return spec.endswith("?")
    if isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[spec.rstrip("?")])


def check_local_schema(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Read the first rows of each local file of a task and check the columns it uses are there
    with the hub's types.  Returns the files checked; raises LlmkitError naming file, row and columns."""
    info = get_task(name)
    root = default_data_dir(data_dir)
    if root is None:
        raise LlmkitError(f"{name}: no data dir given and {DATA_DIR_ENV} is not set")
    checked = []
    for path in local_files(name, root).values():
        if not path.is_file():
            raise LlmkitError(f"{name}: local data missing: {path}")
        rows = _read_rows(path, SCHEMA_ROWS)
        if not rows:
            raise LlmkitError(f"{path}: no rows")
        for lineno, row in rows:
            if not isinstance(row, dict):
                raise LlmkitError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [c for c in info.columns if c not in row]
            if missing:
                raise LlmkitError(
                    f"{path}:{lineno}: {name} needs column(s) {', '.join(missing)} (row has: {', '.join(row) or 'none'})"
                )
            bad = [f"{c} should be {t} (got {type(row[c]).__name__})" for c, t in info.columns.items() if not _type_ok(row[c], t)]
            if bad:
                raise LlmkitError(f"{path}:{lineno}: {name}: {'; '.join(bad)}")
        checked.append(path)
    return checked


def markdown_table() -> str:
    """The suite as a Markdown table (task, group, source, splits, chance, primary metric)."""
    lines = ["| task | group | source | splits read | chance | primary metric |", "|---|---|---|---|---|---|"]
    for t in TASKS.values():
        src = HUB_SOURCES.get(t.name)
        source = "local only" if src is None else src.repo + (f" ({src.name})" if src.name else "") + (
            f" @ {src.revision}" if src.revision and src.revision != "main" else "")
        chance = ", ".join(f"{m} {v:.3g}" for m, v in t.chance.items())
        lines.append(f"| {t.name} | {t.group} | {source} | {', '.join(t.splits)} | {chance} | {t.result_key} |")
    return "\n".join(lines)
