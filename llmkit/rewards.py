r"""Reward functions for GRPO on Spanish math word problems (TRL ``reward_funcs``).

Each reward has TRL's signature ``fn(prompts=None, completions=None, **kwargs) -> list[float]``:
one float per completion; dataset columns arrive as kwargs lists (``answer=[...]``). A completion is a
string or a list of messages (``completion_text``). No completion text makes a reward raise (None,
empty, huge or LaTeX junk all get a number); only a configuration error raises ``LlmkitError``.

``REWARDS`` (the names are recipe keys; ``get_reward_functions`` looks them up):

* ``math_accuracy``: 1.0 when ``extract_answer(completion)`` equals the ``answer`` column (parsed with
  ``parse_spanish_number``) up to ``math.isclose(rel_tol=1e-9, abs_tol=1e-6)`` (a relative 1e-6 would
  call 1000001 equal to 1000000), else 0.0 (no stated answer, inf). No ``answer`` column: ``LlmkitError``.
* ``format``: 1.0 = reasoning + final answer statement, 0.5 = final statement alone, 0.0 otherwise.
  The final statement is the one ``extract_answer`` picks, and it must be the last sentence: after its
  number only the same sentence may go on ("... es 41 manzanas.", ``$``, ``**``), never ". More text".
  Reasoning = at least 3 words or numbers before the statement ("La respuesta es" and a leading
  "La" belong to the statement, also in "La respuesta es \boxed{41}").
* ``spanish``: ``es / (es + en + 1)``. ``es`` counts Spanish function words, plus 0.5 for each word with
  á é í ó ú ü ñ and each ¿ ¡; ``en`` counts English function words; the +1 keeps a single word from
  scoring 1.0. "La respuesta es 5." -> 0.75, "The answer is 5." -> 0.0, empty -> 0.0.
* ``length``: n = number of whitespace-separated words; 1.0 for ``length_min <= n <= length_max``
  (defaults 3 and 120; kwargs of those names override, scalar or one per row), ``n / length_min``
  below, and above a linear fall from 1.0 at ``length_max`` to 0.0 at ``2 * length_max``.

``extract_answer`` rules:

1. the last ``\boxed{...}`` (balanced braces) whose content parses as a number; else
2. the last "respuesta" statement followed by a number: "La respuesta (final|correcta)? es N", also
   "es: N", "es de N", "es igual a N", "Respuesta: N", markdown ``**`` around either part. N is the
   longest run (up to 8 words, same line) that parses: "... es 41 manzanas." -> 41; else
3. None. There is deliberately no fallback to "the last number in the text": a completion that never
   states its answer earns nothing, so the policy learns to state it. English ("The answer is 5") is
   not a statement either, since the prompts ask for «La respuesta es N» (``\boxed{5}`` counts in any language).

``parse_spanish_number`` (Spanish conventions first; anything else -> None; it never raises):

* "1.000", "12.345.678": a dot followed by groups of exactly 3 digits separates thousands; otherwise
  ("7.5", "3.14") it is a decimal point. "3,5" -> 3.5, "1.234,56" -> 1234.56.
* "1,000" is ambiguous and read the Spanish way: 1.0. Unambiguous English forms are accepted:
  "1,234,567" and "1,234.56".
* "1 000": a space, no-break or narrow no-break space (LaTeX ``\,``) between groups of 3 digits.
* "-7", "+7", "−7" (U+2212); "3/4" and "\frac{3}{4}" -> 0.75; "50 %" -> 50 (the number, not 0.5).
* stripped: ``$``, ``\$``, €, ``\(``, ``\[``, ``\left``, markdown ``**``, outer braces, a trailing
  ``.``; ``{,}`` is a decimal comma; ``\text{ manzanas}`` (no digits inside) is dropped.
* words: "cero" ... "veintinueve", tens ("treinta y dos"), hundreds ("doscientas"), "cien", "mil",
  "millón(es)". A bare "un" is an article, not a number.
* Huge numbers ("1" and 400 zeros) become ``inf`` and never match an answer.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from itertools import islice
from typing import Any

from llmkit.config import LlmkitError

REASONING_MIN_WORDS = 3
_SEP = " \u00a0\u202f\u2009"  # space, no-break space, narrow no-break space, thin space
_UNITS = ("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciseis diecisiete dieciocho "
          "diecinueve veinte veintiuno veintidos veintitres veinticuatro veinticinco veintiseis veintisiete veintiocho veintinueve").split()
_TENS = dict(zip("treinta cuarenta cincuenta sesenta setenta ochenta noventa".split(), range(30, 100, 10)))
_HUNDREDS = dict(zip("ciento doscientos trescientos cuatrocientos quinientos seiscientos setecientos ochocientos novecientos".split(),
                     range(100, 1000, 100)))
_NUM_WORDS = {w: i for i, w in enumerate(_UNITS)} | _TENS | _HUNDREDS | {"un": 1, "una": 1, "veintiun": 21, "veintiuna": 21, "cien": 100}
_NUM_WORDS |= {w[:-2] + "as": v for w, v in _HUNDREDS.items() if w.endswith("os")}  # doscientas ...
_MULTIPLIERS = {"mil": 1000, "millon": 10**6, "millones": 10**6}
_BOXED, _SPACES, _TOKEN = re.compile(r"\\boxed\s*\{"), re.compile(r"\s*"), re.compile(r"\S+")
_PHRASE = (r"(?:\b(?:la|mi)\s+)?\brespuesta(?:\s+(?:final|correcta))?\s*(?:\*\*|__)?\s*(?:\bes\b|:|=)"
           r"(?:\s*(?:\*\*)?\s*(?::|\bde\b|\bigual\s+a\b|=))?")
_PHRASE_RE, _PHRASE_AT_END = re.compile(_PHRASE, re.I), re.compile(_PHRASE + r"[\s*$(\[\\]*$", re.I)


def _match_brace(s: str, i: int, limit: int = 500) -> int:
    """Index of the ``}`` closing the ``{`` at ``s[i]`` (looking at most ``limit`` chars ahead), or -1."""
    depth = 0
    for j in range(i, min(len(s), i + limit)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return j
    return -1


def _clean(s: str) -> str:
    s = re.sub(r"\\(?:text|textrm|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", lambda m: m[1] if re.search(r"\d", m[1]) else " ", s)
    s = s.replace("{,}", ",").replace("{.}", ".").replace("\\%", "%").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\[,;:! ]|~", "\u202f", s)  # LaTeX spaces: thousands separators
    s = re.sub(r"\\(?:left|right|displaystyle)\b|\\[()\[\]]|\\?\$|€|\*\*|__|`", "", s).strip().rstrip(" .!;:").strip()
    while s.startswith("{") and _match_brace(s, 0) == len(s) - 1:
        s = s[1:-1].strip()
    return s


def _words_to_number(s: str) -> float | None:
    toks = s.lower().translate(str.maketrans("áéíóú", "aeiou")).replace("-", " ").split()
    if not toks or toks == ["un"] or toks[-1] == "y" or ("cero" in toks and len(toks) > 1):
        return None
    total, group, rank, last_mult, after_y = 0, 0, 4, math.inf, False  # rank: 3 hundreds, 2 tens, 1 units
    for t in toks:
        if t == "y":  # only in "treinta y dos"
            if rank != 2 or group % 100 < 30 or after_y:
                return None
            after_y = True
        elif t in _MULTIPLIERS:  # "dos mil trescientos", "un millón"
            if _MULTIPLIERS[t] >= last_mult:
                return None
            total, group, rank, last_mult = total + (group or 1) * _MULTIPLIERS[t], 0, 4, _MULTIPLIERS[t]
        elif t in _NUM_WORDS:
            v = _NUM_WORDS[t]
            r = 3 if v >= 100 else 2 if v in (20, *_TENS.values()) else 1
            if r >= rank or (rank == 2 and not after_y) or (after_y and v > 9):
                return None
            group, rank, after_y = group + v, r, False
        else:
            return None
    return float(total + group)


def _plain(s: str) -> float | None:
    if re.fullmatch(rf"\d{{1,3}}(?:[{_SEP}]\d{{3}})+(?:[.,]\d+)?", s):  # 1 000
        s = re.sub(f"[{_SEP}]", "", s)
    if re.fullmatch(r"\d{1,3}(?:\.\d{3})+(?:,\d+)?", s):  # 1.000 / 12.345.678 / 1.234,56
        return float(s.replace(".", "").replace(",", "."))
    if re.fullmatch(r"\d+|\d*\.\d+", s):  # 42 / 7.5: a dot not followed by exactly 3 digits is a decimal point
        return float(s)
    if re.fullmatch(r"\d{1,3}(?:,\d{3}){2,}(?:\.\d+)?|\d{1,3},\d{3}\.\d+", s):  # 1,234,567 / 1,234.56
        return float(s.replace(",", ""))
    if re.fullmatch(r"\d*,\d+", s):  # 3,5 and the ambiguous 1,000 -> 1.0
        return float(s.replace(",", "."))
    return _words_to_number(s)


def _parse(s: str) -> float | None:
    s = _clean(s)
    if not s or len(s) > 5000:
        return None
    sign = 1.0
    if s[0] in "-+−–":
        sign, s = (1.0 if s[0] == "+" else -1.0), s[1:].lstrip()
    s = s[:-1].rstrip() if s.endswith("%") else s
    if re.fullmatch(r"\\frac\s*\{.*\}\s*\{.*\}", s):
        j = _match_brace(s, s.index("{"), limit=len(s))
        num, den = _parse(s[s.index("{"):j + 1]), _parse(s[j + 1:])
    elif m := re.fullmatch(r"([^/]+?)\s*/\s*([^/]+)", s):
        num, den = _plain(m[1]), _plain(m[2])
    else:
        num, den = _plain(s), 1.0
    v = None if num is None or not den else sign * num / den
    return None if v is None or math.isnan(v) else v  # inf/inf


def parse_spanish_number(text: str) -> float | None:
    """A number written the Spanish way (see the module docstring), or None. Never raises."""
    try:
        return _parse(text) if isinstance(text, str) else None
    except Exception:  # RecursionError on absurd nesting, ...: a reward must never crash a training step
        return None


def _find_answer(text: str) -> tuple[float, int, int] | None:
    """(value, start, end) of the stated final answer, by the rules in the module docstring."""
    for m in list(_BOXED.finditer(text))[-50:][::-1]:
        j = _match_brace(text, m.end() - 1)
        if j > 0 and (v := parse_spanish_number(text[m.end():j])) is not None:
            return v, m.start(), j + 1
    for m in list(_PHRASE_RE.finditer(text))[-50:][::-1]:
        start = _SPACES.match(text, m.end()).end()
        line_end = text.find("\n", start)
        line_end = len(text) if line_end < 0 else line_end
        for tok in list(islice(_TOKEN.finditer(text, start, line_end), 8))[::-1]:  # the longest run of words that parses
            if (v := parse_spanish_number(text[start:tok.end()])) is not None:
                return v, m.start(), tok.end()
    return None


def extract_answer(text: str) -> float | None:
    """The final answer a completion states (last ``\\boxed{}``, else last «La respuesta es N»), or None."""
    try:
        found = _find_answer(text) if isinstance(text, str) else None
    except Exception:
        return None
    return None if found is None else found[0]


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a str as is, a message list -> the last assistant content, anything else -> ""."""
    if isinstance(completion, str):
        return completion
    for msg in reversed(completion) if isinstance(completion, (list, tuple)) else ():
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            content = msg.get("content")
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
            return content if isinstance(content, str) else ""
    return ""


def _column(kwargs: dict, key: str, n: int) -> list:
    value = kwargs.get(key)
    if not isinstance(value, (list, tuple)):
        return [value] * n
    if len(value) != n:
        raise LlmkitError(f"reward column '{key}' has {len(value)} values for {n} completions")
    return list(value)


def _same(x: float | None, ref: Any) -> bool:
    try:
        ref = parse_spanish_number(ref) if isinstance(ref, str) else None if ref is None or isinstance(ref, bool) else float(ref)
    except (TypeError, ValueError, OverflowError):
        return False
    return (x is not None and ref is not None and math.isfinite(x) and math.isfinite(ref)
            and math.isclose(x, ref, rel_tol=1e-9, abs_tol=1e-6))


def math_accuracy_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """1.0 when the completion's stated final answer equals the ``answer`` column, else 0.0."""
    if kwargs.get("answer") is None:
        cols = sorted(k for k in kwargs if k not in ("trainer_state", "completion_ids", "log_extra", "log_metric", "environments"))
        raise LlmkitError("the math_accuracy reward needs an 'answer' column in the dataset (the reference result of each "
                          f"prompt); columns given: {', '.join(cols) or 'none'}")
    completions = list(completions or [])
    answers = _column(kwargs, "answer", len(completions))
    return [1.0 if _same(extract_answer(completion_text(c)), a) else 0.0 for c, a in zip(completions, answers)]


def _format_score(text: str) -> float:
    try:
        found = _find_answer(text)
        if found is None or re.search(r"[.!?\n]\W*\w", text[found[2] - 1:]):  # no statement, or not the last sentence
            return 0.0
        return 1.0 if len(re.findall(r"\w+", _PHRASE_AT_END.sub("", text[:found[1]]))) >= REASONING_MIN_WORDS else 0.5
    except Exception:
        return 0.0


def format_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """1.0 reasoning + final «La respuesta es N» / ``\\boxed{N}`` as last sentence, 0.5 statement alone, 0.0 else."""
    return [_format_score(completion_text(c)) for c in completions or []]


_ES_WORDS = frozenset("""de la que el en y los del se las por un para con una su al lo como más pero sus le ya o este sí porque esta entre
cuando muy sin sobre también hasta hay donde quien desde todo nos durante todos uno les ni contra otros ese eso ante ellos e esto mí antes
algunos qué unos yo otro otras otra él tanto esa estos mucho muchos cual poco ella estar estas algo nosotros nosotras mi mis tú te ti tu
tus ellas vosotros vosotras os es son está están fue ser estoy soy eres somos tiene tienen tengo tienes hola gracias respuesta menos
cuánto cuántos cuántas cuál cómo dónde usted ustedes bien entonces luego después cada quedan""".split())
_EN_WORDS = frozenset("""the an of and to in is are was were be been it its this that these those with for on at by from as or not but what
which who how many much do does did can could will would should have had i you your she we they them his her their my our there here yes
hello hi nice meet help answer so then plus minus times equals left each written number opposite capital singular form present tense if
than when all""".split())


def _spanish_score(text: str) -> float:
    words = re.findall(r"[^\W\d_]+", text.lower())
    marks = sum(bool(re.search("[áéíóúüñ]", w)) for w in words) + text.count("¿") + text.count("¡")
    es, en = sum(w in _ES_WORDS for w in words) + 0.5 * marks, sum(w in _EN_WORDS for w in words)
    return es / (es + en + 1.0) if words else 0.0


def spanish_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """How Spanish each completion is, in [0, 1): Spanish vs English function words (see module docstring)."""
    return [_spanish_score(completion_text(c)) for c in completions or []]


def _length_score(n: int, lo: Any, hi: Any) -> float:
    try:
        lo, hi = float(3 if lo is None else lo), float(120 if hi is None else hi)
    except (TypeError, ValueError):
        raise LlmkitError(f"length reward: length_min/length_max must be numbers, got {lo!r}/{hi!r}") from None
    if n < lo:
        return n / lo
    return 1.0 if n <= hi else max(0.0, 1.0 - (n - hi) / hi) if hi > 0 else 0.0


def length_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """1.0 between ``length_min`` and ``length_max`` words (default 3..120), linear decay outside."""
    completions = list(completions or [])
    los, his = _column(kwargs, "length_min", len(completions)), _column(kwargs, "length_max", len(completions))
    return [_length_score(len(completion_text(c).split()), lo, hi) for c, lo, hi in zip(completions, los, his)]


REWARDS: dict[str, Callable] = {"math_accuracy": math_accuracy_reward, "format": format_reward, "spanish": spanish_reward,
                                "length": length_reward}


def get_reward_functions(names: list[str]) -> list[Callable]:
    """The reward functions for ``names``, in order; an unknown name -> LlmkitError listing the valid ones."""
    out = []
    for name in [names] if isinstance(names, str) else names:
        if not isinstance(name, str) or name not in REWARDS:
            close = difflib.get_close_matches(str(name), list(REWARDS), n=1, cutoff=0.6)
            hint = f" Did you mean: {close[0]}?" if close else ""
            raise LlmkitError(f"unknown reward function '{name}'.{hint} Valid names: {', '.join(REWARDS)}")
        out.append(REWARDS[name])
    return out
