"""Document processing and scoring for llmkit's own lm-eval tasks (the YAML files beside this one).

The harness imports this file by path (``!function utils.name`` in a task YAML), so it only
imports from the installed ``llmkit`` package, never relatively.

- conll2002_es: ``process_docs_conll`` adds ``text`` (the detokenised sentence) and ``target``
  (the gold entities in the answer format of ``metrics.format_entities``); the model generates
  one line, ``process_results_conll`` returns (tp, n_pred, n_gold) per sentence and the
  ``micro_*`` aggregations pool them over the corpus.
- sqac_es: ``process_docs_sqac`` flattens the hub's SQuAD-style JSON (one row per article,
  ``paragraphs`` -> ``qas``) to one row per question (``id``, ``title``, ``context``,
  ``question``, ``answers`` with ``text``/``answer_start`` lists), and leaves flat rows (local
  copies) as they are; SQuAD-style exact match and F1 with Spanish normalisation, max over gold
  answers.
- sts_es: ``process_docs_sts`` sets ``label`` to the gold similarity (mteb/STSES calls it
  ``score``; PlanTL's original files ``label``); six choices "0".."5" scored by log-likelihood; the predicted similarity is the
  probability-weighted mean of the choices (softmax over the six log-likelihoods), and
  Pearson/Spearman are computed over the whole corpus by ``corpus_pearson``/``corpus_spearman``.
- mldoc_es: ``process_docs_mldoc`` maps the Reuters codes to a gold index (an unknown code
  stops the run with the offending value).
"""

from __future__ import annotations

import math

from llmkit.evaluation import metrics

# ClassLabel order of the hub's conll2002 ``ner_tags``.
CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
MLDOC_LABELS = ("CCAT", "ECAT", "GCAT", "MCAT")

_NO_SPACE_BEFORE = frozenset(",.;:!?)]}»%")
_NO_SPACE_AFTER = frozenset("([{¿¡«")


def detokenize(tokens: list[str]) -> str:
    """Join CoNLL tokens into readable text: no space before ``, . ; : ! ? ) »`` or after ``( ¿ ¡ «``."""
    out = ""
    for tok in tokens:
        if out and not (tok in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER):
            out += " "
        out += tok
    return out


def _tag_names(tags: list) -> list[str]:
    return [CONLL_TAGS[t] if isinstance(t, int) else str(t) for t in tags]


def gold_entities(doc: dict) -> list[tuple[str, str]]:
    """The sentence's entities as (type, text), the text joined as in the prompt."""
    return metrics.bio_to_entities(doc["tokens"], _tag_names(doc["ner_tags"]), join=detokenize)


def process_docs_conll(dataset):
    def _add_fields(doc):
        return {"text": detokenize(doc["tokens"]), "target": metrics.format_entities(gold_entities(doc))}

    return dataset.map(_add_fields)


def process_results_conll(doc: dict, results: list[str]) -> dict:
    counts = metrics.entity_counts(metrics.parse_entities(results[0]), gold_entities(doc))
    return {"f1": counts, "precision": counts, "recall": counts}


def micro_f1(items):
    return metrics.micro_f1(items)


def micro_precision(items):
    return metrics.micro_precision(items)


def micro_recall(items):
    return metrics.micro_recall(items)


def process_docs_sqac(dataset):
    if "paragraphs" not in dataset.column_names:
        return dataset

    def _flatten(batch):
        out = {"id": [], "title": [], "context": [], "question": [], "answers": []}
        for title, paragraphs in zip(batch.get("title") or [None] * len(batch["paragraphs"]), batch["paragraphs"]):
            for para in paragraphs or []:
                for qa in para.get("qas") or []:
                    answers = qa.get("answers") or []
                    out["id"].append(str(qa.get("id", "")))
                    out["title"].append(title or "")
                    out["context"].append(para["context"])
                    out["question"].append(qa["question"])
                    out["answers"].append({"text": [a["text"] for a in answers],
                                           "answer_start": [int(a.get("answer_start", -1)) for a in answers]})
        return out

    return dataset.map(_flatten, batched=True, remove_columns=dataset.column_names)


def process_results_sqac(doc: dict, results: list[str]) -> dict:
    pred, golds = results[0], doc["answers"]["text"]
    return {"exact_match": metrics.qa_exact_match(pred, golds), "f1": metrics.qa_f1(pred, golds)}


def process_docs_sts(dataset):
    if "score" not in dataset.column_names:
        return dataset
    return dataset.map(lambda doc: {"label": float(doc["score"])})


def sts_target(doc: dict) -> int:
    """Index of the gold score rounded half up to an integer 0..5 (the text shown in few-shot examples)."""
    return min(5, max(0, math.floor(float(doc["label"]) + 0.5)))


def expected_score(loglikelihoods: list[float]) -> float:
    """Probability-weighted mean of 0..5 under the softmax of the six choices' log-likelihoods."""
    top = max(loglikelihoods)
    weights = [math.exp(ll - top) for ll in loglikelihoods]
    return sum(i * w for i, w in enumerate(weights)) / sum(weights)


def process_results_sts(doc: dict, results: list) -> dict:
    pred = expected_score([ll for ll, _is_greedy in results])
    pair = (pred, float(doc["label"]))
    return {"pearson": pair, "spearman": pair}


def corpus_pearson(items):
    preds, golds = zip(*items) if items else ((), ())
    return metrics.pearson(list(preds), list(golds))


def corpus_spearman(items):
    preds, golds = zip(*items) if items else ((), ())
    return metrics.spearman(list(preds), list(golds))


def process_docs_mldoc(dataset):
    def _add_gold(doc):
        label = str(doc["label"]).strip().upper()
        if label not in MLDOC_LABELS:
            raise ValueError(f"mldoc_es: label {doc['label']!r} is not one of {', '.join(MLDOC_LABELS)}")
        return {"gold": MLDOC_LABELS.index(label)}

    return dataset.map(_add_gold)


# ---------------------------------------------------------------- ROUGE-1 without the hub
# The harness's spanish_bench ``utils.rouge1_agg`` (xlsum_es, cocoteros_es) calls
# ``evaluate.load("rouge")``, which fetches the metric's script from the hub at scoring time: it
# fails offline and on a cluster node. llmkit's suite swaps in this one (suite.task_config): the
# same scorer evaluate's "rouge" builds (rouge_score, ROUGE-1, no stemmer, rouge_score's default
# tokenizer), F-measure averaged over the documents. evaluate reports the median of 1000 bootstrap
# means instead of the mean, which differs only by that resampling noise.


def rouge1_agg(items):
    from rouge_score import rouge_scorer

    if not items:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    scores = [scorer.score(str(ref), str(pred))["rouge1"].fmeasure for ref, pred in items]
    return sum(scores) / len(scores)
