"""The Spanish evaluation suite's task layer, without a model: metrics on hand-computed cases,
the suite registry, and every task built by lm-eval from the fixtures in tests/fixtures/eval
(offline), then scored end to end by an oracle "model" that answers from the gold labels."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from lm_eval.api.model import LM

from llmkit.config import LlmkitError
from llmkit.evaluation import metrics, suite
from llmkit.evaluation.tasks import utils as task_utils

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
ALL = suite.GROUPS["es"]


# ---------------------------------------------------------------- QA normalisation and scores


def test_normalize_answer_es():
    assert metrics.normalize_answer_es("¿El Río Ebro?") == "río ebro"
    assert metrics.normalize_answer_es("«Sí», dijo él —claro—…") == "sí dijo él claro"
    assert metrics.normalize_answer_es("ri\u0301o") == "río"  # decomposed accent composed by NFKC
    assert metrics.normalize_answer_es("unos lobos y las lonas de LA lonja") == "lobos y lonas de lonja"
    assert metrics.normalize_answer_es("  1.500\u00a0euros ") == "1500 euros"


def test_qa_exact_match_and_f1():
    assert metrics.qa_exact_match("El Río Ebro", ["río Ebro"]) == 1.0
    assert metrics.qa_exact_match("rio ebro", ["río Ebro"]) == 0.0  # accents matter
    assert metrics.qa_f1("rio ebro", ["río Ebro"]) == pytest.approx(0.5)
    assert metrics.qa_exact_match("si", "sí") == 0.0
    # maximum over gold answers: "Ebro" vs "río Ebro" is P=1, R=1/2
    assert metrics.qa_f1("Ebro", ["el Tajo", "río Ebro"]) == pytest.approx(2 / 3)
    assert metrics.qa_f1("Ebro", []) == 0.0
    assert metrics.qa_exact_match("", ["la"]) == 1.0  # both normalise to empty, as in SQuAD
    assert metrics.qa_f1("el puente de piedra", ["puente de madera"]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- NER


def test_parse_entities():
    assert metrics.parse_entities("PER: Juan Pérez | LOC: Madrid") == [("PER", "Juan Pérez"), ("LOC", "Madrid")]
    assert metrics.parse_entities("  per :  Ana   Gómez|loc:Cuenca") == [("PER", "Ana Gómez"), ("LOC", "Cuenca")]
    for none in ("ninguna", " Ninguna.", "", "NINGUNO"):
        assert metrics.parse_entities(none) == []
    # malformed pieces are skipped: no colon, unknown type, empty text
    assert metrics.parse_entities("PER Juan | XYZ: algo | ORG: | MISC: Goya") == [("MISC", "Goya")]
    assert metrics.parse_entities("LUGAR: Soria | Organización: Renfe") == [("LOC", "Soria"), ("ORG", "Renfe")]
    assert metrics.parse_entities("LOC: Soria\nPER: Ana") == [("LOC", "Soria")]  # first line only
    ents = [("PER", "Ana"), ("LOC", "Soria")]
    assert metrics.parse_entities(metrics.format_entities(ents)) == ents
    assert metrics.format_entities([]) == "ninguna"


def test_bio_to_entities():
    toks = ["Ana", "Gómez", "vive", "en", "Aranda", "de", "Duero", "."]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", "O"]
    assert metrics.bio_to_entities(toks, tags) == [("PER", "Ana Gómez"), ("LOC", "Aranda de Duero")]
    # conlleval: an I- without B- starts an entity; a type change starts a new one
    assert metrics.bio_to_entities(["a", "b", "c"], ["I-ORG", "I-ORG", "I-LOC"]) == [("ORG", "a b"), ("LOC", "c")]
    # B- after I- of the same type starts a new entity; O closes it
    assert metrics.bio_to_entities(["a", "b", "c", "d"], ["B-PER", "B-PER", "O", "I-PER"]) == [
        ("PER", "a"), ("PER", "b"), ("PER", "d")]
    assert metrics.bio_to_entities(["x"], ["O"]) == []
    with pytest.raises(ValueError):
        metrics.bio_to_entities(["a"], [])


def test_entity_counts_and_micro_f1():
    gold = [("PER", "Ana Gómez"), ("LOC", "Soria"), ("ORG", "Renfe")]
    pred = [("PER", "Ana  Gómez"), ("LOC", "soria"), ("MISC", "Renfe")]  # 2 right, 1 wrong type
    counts = metrics.entity_counts(pred, gold)
    assert counts == (2, 3, 3)
    p, r, f1 = metrics.micro_precision_recall_f1([counts])
    assert (p, r, f1) == (pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3))
    # multisets: a repeated prediction counts once against one gold
    assert metrics.entity_counts([("LOC", "Soria")] * 2, [("LOC", "Soria")]) == (1, 2, 1)
    # pooled over documents: tp 3, pred 4, gold 6 -> P 3/4, R 1/2, F1 0.6
    p, r, f1 = metrics.micro_precision_recall_f1([(2, 3, 3), (1, 1, 3)])
    assert (p, r, f1) == (pytest.approx(0.75), pytest.approx(0.5), pytest.approx(0.6))
    assert metrics.micro_f1([(0, 0, 0)]) == 0.0
    assert metrics.micro_f1([]) == 0.0


# ---------------------------------------------------------------- correlations


def test_pearson_hand_computed():
    # means 2.5 and 5; sum of products 11; sums of squares 5 and 26
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.pearson([1, 2, 3], [4, 4, 4]) == 0.0  # constant side: defined as 0.0
    assert metrics.pearson([1.0], [2.0]) == 0.0
    with pytest.raises(ValueError):
        metrics.pearson([1, 2], [1])


def test_spearman_with_ties():
    assert metrics.average_ranks([10, 20, 20, 30, 20]) == [1, 3, 3, 5, 3]
    # ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert metrics.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotonic, not linear
    assert metrics.spearman([5, 5, 5], [1, 2, 3]) == 0.0


# ---------------------------------------------------------------- task utils


def test_sts_scoring_helpers():
    assert task_utils.expected_score([0.0] * 6) == pytest.approx(2.5)
    assert task_utils.expected_score([-50.0, -50.0, -50.0, 0.0, -50.0, -50.0]) == pytest.approx(3.0)
    # the mean weighs every choice: half the mass on 1 and half on 4 -> 2.5
    assert task_utils.expected_score([-9e9, 0.0, -9e9, -9e9, 0.0, -9e9]) == pytest.approx(2.5)
    assert [task_utils.sts_target({"label": x}) for x in (0.0, 2.5, 4.49, 4.5, 5.0)] == [0, 3, 4, 5, 5]


def test_detokenize_and_conll_gold_in_prompt():
    assert task_utils.detokenize(["Hola", ",", "¿", "qué", "tal", "?", "(", "EFE", ")"]) == "Hola, ¿qué tal? (EFE)"
    for split in ("train", "test"):
        for line in (FIXTURES / "conll2002_es" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            text = task_utils.detokenize(doc["tokens"])
            for _etype, entity in task_utils.gold_entities(doc):
                assert entity in text  # the gold text is what the model reads
            # scoring the gold answer against itself is perfect
            target = metrics.format_entities(task_utils.gold_entities(doc))
            tp, n_pred, n_gold = task_utils.process_results_conll(doc, [" " + target])["f1"]
            assert tp == n_pred == n_gold


# ---------------------------------------------------------------- registry


def test_resolve_tasks():
    assert suite.resolve_tasks("es") == ALL and len(ALL) == 14
    assert suite.resolve_tasks("es_beto") == [
        "xnli_es_spanish_bench", "paws_es_spanish_bench", "conll2002_es", "sqac_es", "sts_es", "mldoc_es"]
    assert len(suite.resolve_tasks("es_llm")) == 8
    assert suite.resolve_tasks(" xquad_es , sts_es,, xquad_es ") == ["xquad_es", "sts_es"]
    assert suite.resolve_tasks("sts_es,es_beto")[:2] == ["sts_es", "xnli_es_spanish_bench"]
    assert len(suite.resolve_tasks("es_beto,es_llm,es")) == 14
    with pytest.raises(LlmkitError) as err:
        suite.resolve_tasks("es_beto,xquad,copa_es")
    msg = str(err.value)
    assert "'xquad'" in msg and "es_beto" in msg and "es_llm" in msg and "xquad_es" in msg and "mldoc_es" in msg
    with pytest.raises(LlmkitError):
        suite.resolve_tasks(" , ")


def test_registry_fields():
    for name, t in suite.TASKS.items():
        assert t.primary in t.chance, name
        assert t.splits and len(set(t.splits)) == len(t.splits), name
        assert (t.hub is None) == t.local_only, name
    assert suite.TASKS["xnli_es_spanish_bench"].chance["acc"] == pytest.approx(1 / 3)
    assert suite.TASKS["mgsm_direct_es_spanish_bench"].result_key == "exact_match,flexible-extract"
    assert "| mldoc_es | es_beto | local only |" in suite.markdown_table()


def test_every_split_read_has_a_fixture():
    for name in ALL:
        for split, path in suite.local_files(name, FIXTURES).items():
            rows = path.read_text(encoding="utf-8").splitlines()
            assert 6 <= len(rows) <= 8, (name, split)
        assert suite.check_local_schema(name, FIXTURES)


def test_task_spec_without_data_dir(monkeypatch):
    monkeypatch.delenv(suite.DATA_DIR_ENV, raising=False)
    spec = suite.task_spec("xquad_es")  # the hub source: lm-eval's definition with its data source pinned
    assert (spec["task"], spec["dataset_path"], spec["dataset_name"]) == ("xquad_es", "google/xquad", "xquad.es")
    with pytest.raises(LlmkitError) as err:
        suite.task_spec("mldoc_es")
    msg = str(err.value)
    assert "licence" in msg and suite.DATA_DIR_ENV in msg and "mldoc_es/train.jsonl" in msg
    with pytest.raises(LlmkitError, match="unknown eval task 'nope'"):
        suite.task_spec("nope")


def _copy_task(tmp_path: Path, name: str) -> Path:
    shutil.copytree(FIXTURES / name, tmp_path / name)
    return tmp_path


def test_missing_local_file_names_path(tmp_path, monkeypatch):
    monkeypatch.delenv(suite.DATA_DIR_ENV, raising=False)
    root = _copy_task(tmp_path, "paws_es_spanish_bench")
    (root / "paws_es_spanish_bench" / "train.jsonl").unlink()  # the few-shot split
    with pytest.raises(LlmkitError) as err:
        suite.task_spec("paws_es_spanish_bench", root)
    msg = str(err.value)
    assert str(root / "paws_es_spanish_bench" / "train.jsonl") in msg and "paws_es_spanish_bench" in msg
    monkeypatch.setenv(suite.DATA_DIR_ENV, str(root))  # the env var is the default data dir
    with pytest.raises(LlmkitError, match="train.jsonl"):
        suite.task_spec("paws_es_spanish_bench")
    with pytest.raises(LlmkitError, match="mldoc_es/test.jsonl"):
        suite.task_spec("mldoc_es")


def test_check_local_schema_errors(tmp_path):
    root = _copy_task(tmp_path, "belebele_spa_Latn")
    path = root / "belebele_spa_Latn" / "test.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]

    def write(rows_or_text):
        text = rows_or_text if isinstance(rows_or_text, str) else "\n".join(json.dumps(r, ensure_ascii=False) for r in rows_or_text)
        path.write_text(text + "\n", encoding="utf-8")

    bad = [dict(r) for r in rows]
    del bad[1]["question"], bad[1]["mc_answer4"]
    write(bad)
    with pytest.raises(LlmkitError) as err:
        suite.check_local_schema("belebele_spa_Latn", root)
    assert f"{path}:2" in str(err.value) and "question, mc_answer4" in str(err.value)

    bad = [dict(r) for r in rows]
    bad[0]["correct_answer_num"] = 2  # the hub has the string "2"; the YAML's .index() needs it
    write(bad)
    with pytest.raises(LlmkitError, match=r"test.jsonl:1: .*correct_answer_num should be str \(got int\)"):
        suite.check_local_schema("belebele_spa_Latn", root)

    write('{"flores_passage": ')
    with pytest.raises(LlmkitError, match="test.jsonl:1: not valid JSON"):
        suite.check_local_schema("belebele_spa_Latn", root)
    write("")
    with pytest.raises(LlmkitError, match="no rows"):
        suite.check_local_schema("belebele_spa_Latn", root)


# ---------------------------------------------------------------- lm-eval builds every task from the fixtures


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """(TaskManager, specs): lm-eval's task manager with llmkit's tasks, and each task's local spec."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        mp.delenv(suite.DATA_DIR_ENV, raising=False)
        tm = suite.task_manager()
        yield tm, {name: suite.task_spec(name, FIXTURES, tm=tm) for name in ALL}


def test_registry_splits_match_harness_config(harness):
    tm, _ = harness
    for name in ALL:
        assert suite.splits_read(suite.task_config(name, tm)) == suite.TASKS[name].splits, name


def test_task_spec_replaces_only_the_data_source(harness):
    tm, specs = harness
    for name, spec in specs.items():
        original = suite.task_config(name, tm)
        assert spec["dataset_path"] == "json" and spec["dataset_name"] is None
        files = spec["dataset_kwargs"]["data_files"]
        assert set(files) == set(suite.TASKS[name].splits), name
        assert all(Path(p).is_file() for p in files.values())
        for key in set(original) | set(spec):
            if key not in ("dataset_path", "dataset_name", "dataset_kwargs"):
                assert spec.get(key) == original.get(key), (name, key)
    # mgsm: test rows have answer null, so train (typed) must be listed first for datasets' json builder
    assert list(specs["mgsm_direct_es_spanish_bench"]["dataset_kwargs"]["data_files"]) == ["train", "test"]


def test_every_task_builds_from_fixtures(harness):
    tm, specs = harness
    tasks = tm.load(list(specs.values()))["tasks"]
    assert sorted(tasks) == sorted(ALL)
    for name, task in tasks.items():
        docs = list(task.eval_docs)
        assert len(docs) > 0, name
        for doc in docs:
            text, target = task.doc_to_text(doc), task.doc_to_target(doc)
            assert isinstance(text, str), name
            if task.config.output_type == "multiple_choice":
                choices = task.doc_to_choice(doc)
                assert len(choices) >= 2 and all(isinstance(c, str) and c for c in choices), name
                gold = choices.index(target) if isinstance(target, str) else target
                assert isinstance(gold, int) and 0 <= gold < len(choices), (name, target, choices)
            else:
                assert isinstance(target, str) and target.strip(), name
        context = task.fewshot_context(docs[0], num_fewshot=2)
        assert context.endswith(task.doc_to_text(docs[0])) and len(context) > len(task.doc_to_text(docs[0])), name


class OracleLM(LM):
    """Stands in for a model: picks the gold choice and writes the gold answer (``good``), or
    always picks the first choice and writes nothing (``good=False``).  For STS it puts its
    probability mass around the gold score."""

    def __init__(self, tasks, good=True):
        super().__init__()
        self.tasks, self.good = tasks, good

    def _gold(self, req):
        task = self.tasks[req.task_name]
        target, choices = task.doc_to_target(req.doc), task.doc_to_choice(req.doc)
        return choices.index(target) if isinstance(target, str) else target

    def loglikelihood(self, requests, disable_tqdm=False):
        out = []
        for req in requests:
            if not self.good:
                ll = 0.0 if req.idx == 0 else -5.0
            elif req.task_name == "sts_es":
                ll = -4.0 * (req.idx - float(req.doc["label"])) ** 2
            else:
                ll = 0.0 if req.idx == self._gold(req) else -5.0
            out.append((ll, False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        return [str(self.tasks[r.task_name].doc_to_target(r.doc)) if self.good else "" for r in requests]


def _evaluate(tm, specs, names, good):
    from lm_eval.evaluator import evaluate

    loaded = tm.load([specs[n] for n in names])
    lm = OracleLM(loaded["tasks"], good=good)
    return evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=False)["results"]


def test_oracle_scores_every_task_at_the_top(harness):
    tm, specs = harness
    results = _evaluate(tm, specs, ALL, good=True)
    for name in ALL:
        info = suite.TASKS[name]
        res = results[name]
        for metric in info.chance:
            assert f"{metric},{info.filter}" in res, (name, metric, sorted(res))
        if name == "sts_es":
            assert res["pearson,none"] > 0.95 and res["spearman,none"] > 0.95
        else:
            assert res[info.result_key] == pytest.approx(1.0), (name, res)


def test_wrong_answers_score_low(harness):
    tm, specs = harness
    names = ["conll2002_es", "sqac_es", "sts_es", "mldoc_es"]
    results = _evaluate(tm, specs, names, good=False)
    assert results["conll2002_es"]["f1,none"] == 0.0  # every test sentence but one has entities
    assert results["sqac_es"]["exact_match,none"] == 0.0 and results["sqac_es"]["f1,none"] == 0.0
    assert results["sts_es"]["pearson,none"] == 0.0  # the same prediction for every pair
    assert results["mldoc_es"]["acc,none"] == pytest.approx(0.25)  # always "empresas": 2 of 8
