"""GRPO reward functions (llmkit/rewards.py): Spanish number parsing, answer extraction, the four
registry rewards, their TRL calling convention, and their behaviour on the shipped data sets.

Pure Python, no model: the whole file runs in about a second.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
from conftest import DATA, read_jsonl

from llmkit.config import LlmkitError
from llmkit.rewards import (
    _EN_WORDS,
    _ES_WORDS,
    REWARDS,
    completion_text,
    extract_answer,
    get_reward_functions,
    parse_spanish_number,
)

math_accuracy, fmt, spanish, length = (REWARDS[k] for k in ("math_accuracy", "format", "spanish", "length"))
HUGE = "1" + "0" * 400
MATH_SUFFIX = "«La respuesta es N»."


def one(fn, completion, **kwargs) -> float:
    out = fn(prompts=["p"], completions=[completion], **kwargs)
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], float)
    return out[0]


def close(a, b) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# --------------------------------------------------------------------------- parse_spanish_number

NUMBERS = [
    ("41", 41), ("0", 0), ("1.000", 1000), ("12.345.678", 12345678), ("3,5", 3.5), ("0,5", 0.5), ("1.234,56", 1234.56),
    ("1 000", 1000), ("1\u00a0000", 1000), ("1\u202f000", 1000), ("12 345 678", 12345678), ("1 000,5", 1000.5),
    ("-7", -7), ("+7", 7), ("\u22127", -7), ("\u2212 7", -7), ("7.5", 7.5), ("3.14159", 3.14159), ("1234.567", 1234.567),
    ("1,000", 1.0),  # ambiguous: the Spanish decimal comma wins (documented)
    ("1,234,567", 1234567), ("1,234.56", 1234.56),  # unambiguous English forms
    ("3/4", 0.75), ("-3/4", -0.75), ("3 / 4", 0.75), ("50 %", 50), ("50%", 50), ("12,5\\%", 12.5),
    ("\\frac{3}{4}", 0.75), ("\\dfrac{1}{2}", 0.5), ("-\\frac{1}{2}", -0.5), ("\\frac{\\frac{1}{2}}{2}", 0.25),
    ("\\$ 5", 5), ("$5$", 5), ("5 €", 5), ("5\\,000", 5000), ("3{,}5", 3.5), ("1{.}000", 1000), ("5\\text{ manzanas}", 5),
    ("\\text{5}", 5), ("$1.000$", 1000), ("\\(12\\)", 12), ("**41**", 41), ("41.", 41), ("1.000.", 1000), ("{12}", 12), ("{{12}}", 12),
    ("cero", 0), ("uno", 1), ("una", 1), ("dos", 2), ("Doce", 12), ("quince", 15), ("dieciséis", 16), ("dieciseis", 16),
    ("veinte", 20), ("veintiún", 21), ("veintidós", 22), ("treinta", 30), ("treinta y dos", 32), ("noventa y nueve", 99),
    ("cien", 100), ("ciento cinco", 105), ("doscientas", 200), ("quinientos treinta y uno", 531), ("mil", 1000),
    ("dos mil trescientos cuarenta y uno", 2341), ("cien mil", 100000), ("un millón", 1e6),
]


@pytest.mark.parametrize("text,expected", NUMBERS, ids=[repr(t) for t, _ in NUMBERS])
def test_parse_spanish_number(text, expected):
    assert close(parse_spanish_number(text), expected)


NOT_NUMBERS = ["", "   ", "abc", "un", "y", "treinta dos", "dos tres", "veinte y", "mil mil", "cero cero", "1/0", "\\frac{1}{0}",
               "1.2.3", "1,2,3", "--5", "5 manzanas", "x = 5", "\\boxed{12}", "NaN", "inf", "1e5", "½", "{", "}", "\\frac{1}", "%",
               "−", "12 34", "1 0000"]


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_parse_spanish_number_rejects(text):
    assert parse_spanish_number(text) is None


@pytest.mark.parametrize("value", [None, 12, 3.5, b"12", ["12"]])
def test_parse_spanish_number_non_strings(value):
    assert parse_spanish_number(value) is None


@pytest.mark.parametrize("text", [HUGE, "-" + HUGE, "9" * 4000, "9" * 100_000, "\\frac{" * 700 + "1" + "}{2}" * 700, "{" * 10_000 + "1",
                                  f"{HUGE}/{HUGE}", f"\\frac{{{HUGE}}}{{{HUGE}}}", f"1/{HUGE}"])
def test_parse_spanish_number_huge_never_raises(text):
    v = parse_spanish_number(text)
    assert v is None or math.isinf(v) or v == 0.0


# --------------------------------------------------------------------------- extract_answer

ANSWERS = [
    ("12 por 3 son 36. 36 más 5 son 41. La respuesta es 41.", 41),  # several numbers: only the stated one counts
    ("Tengo 5 y 7. La respuesta es 12. Mañana tendré 20.", 12),
    ("La respuesta es 1.806.", 1806), ("La respuesta es 12.345.678.", 12345678), ("La respuesta es 1 000 manzanas.", 1000),
    ("La respuesta es 1\u202f000.", 1000), ("La respuesta es 3,5.", 3.5), ("La respuesta es \u22127.", -7), ("La respuesta es -7", -7),
    ("La respuesta es 7.5", 7.5), ("La respuesta es 50 %.", 50), ("La respuesta es 3/4.", 0.75),
    ("La respuesta es: 41", 41), ("La respuesta es de 41 euros.", 41), ("la respuesta es igual a 41", 41),
    ("La respuesta final es 41.", 41), ("La respuesta correcta es 41.", 41), ("LA RESPUESTA ES 41", 41), ("Respuesta: 41", 41),
    ("**Respuesta:** 41", 41), ("**Respuesta**: 41", 41), ("La respuesta es **41**.", 41), ("La respuesta es: **2.240**", 2240),
    ("**La respuesta es 41.**", 41), ("La respuesta es:\n\n41", 41), ("Respuesta = 41", 41),
    ("La respuesta es cuarenta y uno.", 41), ("La respuesta es doce manzanas.", 12), ("La respuesta es $\\frac{1}{2}$.", 0.5),
    ("\\boxed{41}", 41), ("El total es $\\boxed{1.025}$.", 1025), ("\\boxed{\\frac{1}{2}}", 0.5), ("\\boxed{{12}}", 12),
    ("\\boxed{ 12 }", 12), ("\\boxed{5\\text{ manzanas}}", 5), ("\\boxed{1{,}5}", 1.5), ("\\[\\boxed{-3}\\]", -3),
    ("Primero \\boxed{3}, después \\boxed{5}", 5),  # the last boxed
    ("\\boxed{7}. Luego: la respuesta es 9.", 7),  # a boxed answer is preferred over the phrase
    ("La respuesta es 9. \\boxed{}", 9),  # an empty boxed states nothing
    ("La respuesta es 41. Comprobación: la respuesta es correcta.", 41),  # the last statement *with a number*
    ("The answer is 40. La respuesta es 41.", 41),
]


@pytest.mark.parametrize("text,expected", ANSWERS, ids=[repr(t)[:60] for t, _ in ANSWERS])
def test_extract_answer(text, expected):
    assert close(extract_answer(text), expected)


NO_ANSWER = [
    "", "36 más 5 son 41.",  # never states it: no fallback to the last number (documented)
    "La respuesta es", "La respuesta es.", "La respuesta es:", "La respuesta es\n\n", "La respuesta es x.",
    "La respuesta es un número par.",
    "The answer is 41.", "The answer is 41", "Answer: 41",  # English: not a statement (documented)
    "\\boxed{}", "\\boxed{12", "\\boxed{x+1}", "\\boxed{{}}", "Mi correspondencia es 5",
]


@pytest.mark.parametrize("text", NO_ANSWER)
def test_extract_answer_none(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize("value", [None, 41, ["La respuesta es 41."], {"content": "La respuesta es 41."}])
def test_extract_answer_non_strings(value):
    assert extract_answer(value) is None


def test_extract_answer_huge():
    v = extract_answer(f"Muchas cuentas. La respuesta es {HUGE}.")
    assert v is None or math.isinf(v)
    assert extract_answer("x" * 200_000 + " La respuesta es 5.") == 5
    assert extract_answer("La respuesta es 5. " * 20_000) == 5


# --------------------------------------------------------------------------- completion_text

@pytest.mark.parametrize("completion,expected", [
    ("hola", "hola"),
    ([{"role": "assistant", "content": "hola"}], "hola"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"}, {"role": "assistant", "content": "a2"}], "a2"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "a"),
    ([{"role": "assistant", "content": [{"type": "text", "text": "ho"}, {"type": "image"}, {"type": "text", "text": "la"}]}], "hola"),
    ((({"role": "assistant", "content": "tupla"}),), "tupla"),
    (None, ""), (42, ""), (b"hola", ""), ({"role": "assistant", "content": "x"}, ""), ([], ""), (["hola"], ""),
    ([{"role": "user", "content": "q"}], ""), ([{"role": "assistant", "content": None}], ""), ([{"role": "assistant"}], ""),
    ([{"content": "sin rol"}], ""),
])
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


# --------------------------------------------------------------------------- math_accuracy

@pytest.mark.parametrize("completion,answer,expected", [
    ("30 más 37 son 67. La respuesta es 67.", "67", 1.0),
    ("La respuesta es 1.025.", "1025", 1.0), ("La respuesta es 1025.", "1025", 1.0), ("La respuesta es 1 025", "1025", 1.0),
    ("La respuesta es 1,025", "1025", 0.0),  # the decimal comma reading: 1.025 (documented)
    ("La respuesta es 104.", "105", 0.0), ("La respuesta es 105,0", "105", 1.0), ("Respuesta: 105", 105, 1.0),
    ("La respuesta es 0,75", "3/4", 1.0), ("La respuesta es cien.", "100", 1.0), ("La respuesta es -7", "\u22127", 1.0),
    ("La respuesta es 1000001", "1000000", 0.0), ("La respuesta es 0,3333333333", 1 / 3, 1.0),
    ("\\boxed{105}", "105", 1.0), ("The answer is 105.", "105", 0.0), ("105", "105", 0.0),
    ("10 por 10 son 100. 100 más 5 son 105.", "105", 0.0),  # right number, never stated
    ("", "5", 0.0), (None, "5", 0.0), ("La respuesta es 5", None, 0.0), ("La respuesta es 5", "cinco", 1.0),
    ("La respuesta es 5", "abc", 0.0), ("La respuesta es 5", True, 0.0), ("La respuesta es 5", ["5"], 0.0),
    (f"La respuesta es {HUGE}", HUGE, 0.0), (f"La respuesta es {HUGE}", 10**400, 0.0),  # inf never matches
    ([{"role": "assistant", "content": "La respuesta es 41."}], "41", 1.0),
])
def test_math_accuracy(completion, answer, expected):
    assert one(math_accuracy, completion, answer=[answer]) == expected


def test_math_accuracy_batch():
    comps = ["La respuesta es 1.", "La respuesta es 3.", "nada", None, [{"role": "assistant", "content": "\\boxed{5}"}]]
    assert math_accuracy(prompts=["p"] * 5, completions=comps, answer=["1", "2", "3", "4", "5"]) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert math_accuracy(prompts=[], completions=[], answer=[]) == []


@pytest.mark.parametrize("kwargs", [{}, {"answer": None}, {"solution": ["5"]}])
def test_math_accuracy_needs_answer_column(kwargs):
    with pytest.raises(LlmkitError, match="'answer' column"):
        math_accuracy(prompts=["p"], completions=["La respuesta es 5."], **kwargs)


def test_math_accuracy_column_length_mismatch():
    with pytest.raises(LlmkitError, match="2 values for 1 completions"):
        math_accuracy(prompts=["p"], completions=["La respuesta es 5."], answer=["5", "6"])


# --------------------------------------------------------------------------- format

REASONING = "12 por 3 son 36. 36 más 5 son 41."


@pytest.mark.parametrize("completion,expected", [
    (f"{REASONING} La respuesta es 41.", 1.0), (f"{REASONING}\nLa respuesta es 41.", 1.0), (f"{REASONING} La respuesta es 41", 1.0),
    (f"{REASONING} La respuesta es **41**.", 1.0), (f"{REASONING} La respuesta es 41 manzanas.", 1.0),
    (f"{REASONING} La respuesta es \\boxed{{41}}.", 1.0), (f"{REASONING} $\\boxed{{41}}$", 1.0), (f"{REASONING}\n\n**Respuesta:** 41", 1.0),
    ("Sumamos 36 y 5: el total es $\\boxed{41}$.", 1.0), (f"{REASONING} La respuesta es 41.\n", 1.0),
    ("La respuesta es 41.", 0.5), ("Respuesta: 41", 0.5), ("\\boxed{41}", 0.5), ("La respuesta es \\boxed{41}.", 0.5),
    ("Bien. La respuesta es 41.", 0.5), ("  La respuesta es 1.000.  ", 0.5),
    (f"{REASONING} La respuesta es 41. Espero que te sirva.", 0.0),  # the statement is not the last sentence
    (f"{REASONING} La respuesta es 41.\n\n**Fin**", 0.0), (REASONING, 0.0), ("", 0.0), (None, 0.0), ("La respuesta es", 0.0),
    (f"{REASONING} La respuesta es", 0.0), (f"{REASONING} The answer is 41.", 0.0), (f"{REASONING} \\boxed{{}}", 0.0),
    ([{"role": "assistant", "content": f"{REASONING} La respuesta es 41."}], 1.0),
])
def test_format(completion, expected):
    assert one(fmt, completion) == expected


# --------------------------------------------------------------------------- spanish

def test_spanish_contrast():
    es, en = one(spanish, "La respuesta es 5."), one(spanish, "The answer is 5.")
    assert es > 0.7 and en < 0.1
    assert one(spanish, "¡Hola! ¿En qué puedo ayudarte?") > 0.7
    assert one(spanish, "Hello! How can I help you?") < 0.1
    assert one(spanish, REASONING + " La respuesta es 41.") > one(spanish, "La respuesta es 41.")
    mixed = one(spanish, "The answer is 5, es decir, la respuesta es cinco.")
    assert en < mixed < one(spanish, "Es decir, la respuesta es cinco.")


@pytest.mark.parametrize("completion", ["", None, "   ", "12 + 5 = 17", "\\boxed{41}", 42])
def test_spanish_no_words(completion):
    assert one(spanish, completion) == 0.0


def test_word_lists_are_disjoint():
    assert not _ES_WORDS & _EN_WORDS


# --------------------------------------------------------------------------- length

def words(n: int) -> str:
    return " ".join(["palabra"] * n)


@pytest.mark.parametrize("n,expected", [(0, 0.0), (1, 1 / 3), (2, 2 / 3), (3, 1.0), (50, 1.0), (120, 1.0), (180, 0.5), (240, 0.0),
                                        (5000, 0.0)])
def test_length_defaults(n, expected):
    assert close(one(length, words(n)), expected)


def test_length_overrides():
    assert one(length, words(3), length_min=1, length_max=2) == 0.5
    assert one(length, words(1), length_min=2, length_max=2) == 0.5
    out = length(prompts=["p", "q"], completions=[words(3), words(3)], length_min=[1, 6], length_max=[2, 10])
    assert out == [0.5, 0.5]
    assert one(length, words(3), length_min=[None], length_max=[None]) == 1.0
    with pytest.raises(LlmkitError, match="length_min/length_max"):
        length(prompts=["p"], completions=["a"], length_min="mucho")


# --------------------------------------------------------------------------- robustness and the TRL contract

JUNK = [
    None, "", " ", 42, 3.5, b"bytes", {"a": 1}, [], [None], [{"role": "assistant"}], [{"role": "assistant", "content": 5}],
    "\\boxed{", "\\boxed{}" * 1000, "\\boxed{" * 5000, "{" * 10_000, "}" * 10_000, "\\frac{" * 2000, "$" * 1000,
    "\\boxed{" + "\\frac{" * 100 + "1" + "}{2}" * 100 + "}", "\\boxed{\\frac{1}{0}}", "La respuesta es 1/0",
    "La respuesta es " * 2000, "La respuesta es " + "9" * 10_000, HUGE, f"La respuesta es {HUGE}", f"\\boxed{{{HUGE}}}",
    "La respuesta es inf", "La respuesta es nan", "La respuesta es 1e309", "La respuesta es \u2212", "\\text{", "\x00\ufffd\u200b",
    "a" * 200_000, "🙂" * 1000, "La respuesta es " + "mil " * 100, "La respuesta es " + "nueve " * 100, "\\\\\\\\", "\n" * 1000,
]


@pytest.mark.parametrize("name", list(REWARDS))
def test_rewards_never_raise_on_junk(name):
    fn = REWARDS[name]
    out = fn(prompts=["p"] * len(JUNK), completions=JUNK, answer=["5"] * len(JUNK))
    assert len(out) == len(JUNK)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out), out


@pytest.mark.parametrize("name", list(REWARDS))
def test_trl_signature_and_names(name):
    fn = REWARDS[name]
    params = inspect.signature(fn).parameters
    assert {"prompts", "completions"} <= set(params) and any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert name in fn.__name__ and fn.__name__ != "<lambda>"
    batch = ["La respuesta es 1.", "otra cosa", [{"role": "assistant", "content": "La respuesta es 3."}]]
    # TRL also passes trainer_state, completion_ids and every dataset column
    out = fn(prompts=["a", "b", "c"], completions=batch, answer=["1", "2", "3"], completion_ids=[[1], [2], [3]], trainer_state=None)
    assert len(out) == 3
    assert fn(prompts=[], completions=[], answer=[]) == []


def test_reward_names_are_unique():
    assert len({fn.__name__ for fn in REWARDS.values()}) == len(REWARDS)


def test_get_reward_functions():
    assert get_reward_functions(["math_accuracy", "format"]) == [REWARDS["math_accuracy"], REWARDS["format"]]
    assert get_reward_functions(["length", "spanish", "math_accuracy"]) == [length, spanish, math_accuracy]
    assert get_reward_functions([]) == []
    assert all(callable(f) for f in get_reward_functions(list(REWARDS)))


@pytest.mark.parametrize("names,hint", [(["math_acuracy"], "Did you mean: math_accuracy?"), (["format", "nope"], "'nope'"),
                                        ([None], "None")])
def test_get_reward_functions_unknown(names, hint):
    with pytest.raises(LlmkitError) as exc:
        get_reward_functions(names)
    assert hint in str(exc.value)
    assert all(k in str(exc.value) for k in REWARDS)


# --------------------------------------------------------------------------- the shipped data

def math_turns(path):
    """(user prompt, reference assistant answer) for every math word problem in an SFT file."""
    for row in read_jsonl(path):
        msgs = row["messages"]
        for i, m in enumerate(msgs[:-1]):
            if m["role"] == "user" and m["content"].endswith(MATH_SUFFIX) and msgs[i + 1]["role"] == "assistant":
                yield m["content"], msgs[i + 1]["content"]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_sft_math_answers_score_full(split):
    turns = list(math_turns(DATA / f"sft_{split}.jsonl"))
    assert len(turns) > (300 if split == "train" else 10)
    answers = [a for _, a in turns]
    refs = [re.findall(r"\d+", a)[-1] for a in answers]
    n = len(answers)
    assert fmt(prompts=[None] * n, completions=answers) == [1.0] * n
    assert all(s > 0.5 for s in spanish(prompts=[None] * n, completions=answers))
    assert math_accuracy(prompts=[None] * n, completions=answers, answer=refs) == [1.0] * n
    assert all(v == 1.0 for v in length(prompts=[None] * n, completions=answers))


def test_math_train_answers_in_every_spelling():
    rows = read_jsonl(DATA / "math_train.jsonl")
    answers = [r["answer"] for r in rows]
    assert any(int(a) >= 1000 for a in answers)
    n = len(rows)
    spellings = {
        "plain": [f"La respuesta es {a}." for a in answers],
        "thousands dot": [f"La respuesta es {int(a):,}.".replace(",", ".") for a in answers],
        "thousands nbsp": [f"La respuesta es {int(a):,}.".replace(",", "\u202f") for a in answers],
        "boxed": [f"Sumando todo, $\\boxed{{{a}}}$" for a in answers],
        "conversational": [[{"role": "assistant", "content": f"**Respuesta:** {a}"}] for a in answers],
    }
    for name, comps in spellings.items():
        assert math_accuracy(prompts=[r["prompt"] for r in rows], completions=comps, answer=answers) == [1.0] * n, name
    wrong = [f"La respuesta es {int(a) + 1}." for a in answers]
    assert math_accuracy(prompts=[None] * n, completions=wrong, answer=answers) == [0.0] * n
    english = [f"The answer is {a}." for a in answers]
    assert math_accuracy(prompts=[None] * n, completions=english, answer=answers) == [0.0] * n


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_preferences_english_rejected_scores_below_chosen(split):
    rows = [r for r in read_jsonl(DATA / f"preferences_{split}.jsonl") if r["rejected"][-1]["content"].startswith(("The ", "Hello"))]
    assert len(rows) > (100 if split == "train" else 10)
    n = len(rows)
    chosen = spanish(prompts=[r["prompt"] for r in rows], completions=[r["chosen"] for r in rows])  # conversational completions
    rejected = spanish(prompts=[r["prompt"] for r in rows], completions=[r["rejected"] for r in rows])
    assert len(chosen) == len(rejected) == n
    bad = [(r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r, c, j in zip(rows, chosen, rejected) if not j < c]
    assert not bad
