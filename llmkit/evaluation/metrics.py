"""Metrics for llmkit's own Spanish tasks, in plain Python (no numpy, no scipy).

Extractive QA (SQAC)
    ``normalize_answer_es`` is SQuAD/MLQA-style normalisation adapted to Spanish, applied to
    both the prediction and every gold answer before comparing them:

    1. Unicode NFKC.  It composes accents, so "río" typed as ``r i U+0301 o`` equals the
       precomposed "río", and folds compatibility forms (no-break space, ligatures, full-width
       letters).  Both sides go through it, so the few lossy folds (``º`` -> ``o``) are symmetric.
    2. Lowercase.
    3. Delete punctuation: every Unicode punctuation character (general category ``P*``:
       ``¿ ¡ « » — … “ ”`` and ASCII ``. , ; : ! ?`` ...) plus the ASCII symbols of
       ``string.punctuation`` (``$ + < = > ^ ` | ~``) for parity with SQuAD.  Characters are
       deleted, not replaced by a space, as SQuAD does, so "1.500" and "1500" match.
    4. Delete the articles el, la, lo, los, las, un, una, unos, unas as whole words.
    5. Collapse whitespace.

    Accents are kept on purpose: in Spanish they tell words apart (sí/si, él/el, más/mas,
    té/te, sé/se).  Stripping them would turn the pronoun "él" into the article "el" and delete
    it.  So "rio ebro" against "río Ebro" is not an exact match (F1 0.5).

    ``qa_exact_match`` and ``qa_f1`` take the maximum over the gold answers; F1 is computed on
    the bag of normalised tokens (SQuAD's token F1).

Named entities (CoNLL-2002)
    The model writes its entities on one line, ``TIPO: texto | TIPO: texto``, with TIPO one of
    PER, ORG, LOC, MISC (Spanish names such as PERSONA or LUGAR are accepted too), or
    ``ninguna`` when there are none.  ``parse_entities`` reads that line, ``bio_to_entities``
    turns gold BIO tags into the same (type, text) pairs, ``entity_counts`` matches the two as
    multisets of (type, normalised text) and ``micro_f1`` pools the counts over the corpus.
    Entity text is normalised with NFKC, collapsed whitespace and casefolding (case is not
    judged: "banco de españa" counts for "Banco de España").

Correlations (STS-es)
    ``pearson`` and ``spearman`` (Spearman = Pearson on average ranks, so ties are handled).
    For a constant input, or fewer than two points, the correlation is undefined; both return
    0.0 then: a constant prediction carries no information about the ordering, and 0.0 keeps
    reports numeric (no NaN in JSON).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

# ---------------------------------------------------------------- extractive QA

SPANISH_ARTICLES = ("el", "la", "lo", "los", "las", "un", "una", "unos", "unas")
_ARTICLES_RE = re.compile(r"\b(?:" + "|".join(SPANISH_ARTICLES) + r")\b")
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punctuation(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer_es(text: str) -> str:
    """Normalise an answer for comparison (see the module docstring for each step)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not _is_punctuation(ch))
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _as_list(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def qa_exact_match(pred: str, golds: str | Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0 (0.0 if no gold)."""
    p = normalize_answer_es(pred)
    return max((float(p == normalize_answer_es(g)) for g in _as_list(golds)), default=0.0)


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(pred: str, golds: str | Iterable[str]) -> float:
    """Token-level F1 on normalised answers, maximum over the gold answers (0.0 if no gold)."""
    p = normalize_answer_es(pred).split()
    return max((_token_f1(p, normalize_answer_es(g).split()) for g in _as_list(golds)), default=0.0)


# ---------------------------------------------------------------- named entities

# Spelling variants a model may write for each type (compared after uppercasing, accents kept).
_TYPE_ALIASES = {
    "PER": "PER", "PERS": "PER", "PERSONA": "PER",
    "ORG": "ORG", "ORGANIZACION": "ORG", "ORGANIZACIÓN": "ORG",
    "LOC": "LOC", "LUGAR": "LOC", "LOCALIZACION": "LOC", "LOCALIZACIÓN": "LOC",
    "MISC": "MISC", "OTRO": "MISC", "OTROS": "MISC", "VARIOS": "MISC",
}
NO_ENTITIES = "ninguna"
_NONE_WORDS = {"ninguna", "ninguno", "ningunas", "ningunos", "none", "-"}

Entity = tuple[str, str]  # (type, text)


def format_entities(entities: Iterable[Entity]) -> str:
    """The target string for a list of entities: ``"PER: Ana | LOC: Cuenca"`` or ``"ninguna"``."""
    parts = [f"{etype}: {text}" for etype, text in entities]
    return " | ".join(parts) if parts else NO_ENTITIES


def parse_entities(text: str) -> list[Entity]:
    """Read a model's answer in the ``TIPO: texto | TIPO: texto`` format.

    Types are matched case- and space-insensitively (``" per :"`` works); pieces without a
    colon, with an unknown type or an empty text are skipped; ``ninguna`` (or an empty answer)
    gives ``[]``.  Only the first line is read.  Entity text keeps its original spelling here;
    matching normalises it (see ``entity_counts``).
    """
    lines = text.strip().splitlines()
    line = lines[0].strip() if lines else ""
    if line.rstrip(".").strip().lower() in _NONE_WORDS | {""}:
        return []
    entities: list[Entity] = []
    for piece in line.split("|"):
        etype, sep, value = piece.partition(":")
        if not sep:
            continue
        etype = _TYPE_ALIASES.get("".join(etype.split()).upper())
        value = " ".join(value.split())
        if etype and value:
            entities.append((etype, value))
    return entities


def bio_to_entities(tokens: Sequence[str], tags: Sequence[str], join=" ".join) -> list[Entity]:
    """Spans of BIO tags (``B-PER``, ``I-PER``, ``O`` ...) as (type, text), conlleval-style.

    A ``B-X`` always starts an entity; an ``I-X`` continues the open entity when it has type X
    and otherwise starts a new one (an I- without B- is an entity start, as in conlleval).
    Any other tag closes the open entity.  ``join`` turns an entity's tokens into its text.
    """
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    entities: list[Entity] = []
    etype, start = None, 0

    def close(end: int) -> None:
        if etype is not None:
            entities.append((etype, join(list(tokens[start:end]))))

    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        if prefix == "B" and kind or prefix == "I" and kind and kind != etype:
            close(i)
            etype, start = kind, i
        elif not (prefix == "I" and kind == etype):
            close(i)
            etype = None
    close(len(tags))
    return entities


def _entity_key(entity: Entity) -> Entity:
    etype, text = entity
    return etype, " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def entity_counts(pred_entities: Iterable[Entity], gold_entities: Iterable[Entity]) -> tuple[int, int, int]:
    """(true positives, predicted, gold): exact (type, normalised text) matches, as multisets."""
    pred = Counter(_entity_key(e) for e in pred_entities)
    gold = Counter(_entity_key(e) for e in gold_entities)
    return sum((pred & gold).values()), sum(pred.values()), sum(gold.values())


def micro_precision_recall_f1(counts_list: Iterable[Sequence[int]]) -> tuple[float, float, float]:
    """Pool (tp, n_pred, n_gold) over documents.  A ratio with a zero denominator is 0.0."""
    tp = n_pred = n_gold = 0
    for t, p, g in counts_list:
        tp, n_pred, n_gold = tp + t, n_pred + p, n_gold + g
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def micro_f1(counts_list: Iterable[Sequence[int]]) -> float:
    """Entity-level micro F1 over the corpus."""
    return micro_precision_recall_f1(counts_list)[2]


def micro_precision(counts_list: Iterable[Sequence[int]]) -> float:
    return micro_precision_recall_f1(counts_list)[0]


def micro_recall(counts_list: Iterable[Sequence[int]]) -> float:
    return micro_precision_recall_f1(counts_list)[1]


# ---------------------------------------------------------------- correlations


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's r; 0.0 when either side is constant or there are fewer than two points."""
    if len(xs) != len(ys):
        raise ValueError(f"pearson: {len(xs)} values against {len(ys)}")
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    dx = [x - mx for x in xs]
    dy = [y - my for y in ys]
    sxx, syy = math.fsum(d * d for d in dx), math.fsum(d * d for d in dy)
    if sxx == 0.0 or syy == 0.0:
        return 0.0
    r = math.fsum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rho (Pearson on average ranks); 0.0 for constant input, like ``pearson``."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman: {len(xs)} values against {len(ys)}")
    return pearson(average_ranks(xs), average_ranks(ys))
