"""Seeded malformed-row fuzz test over the dataset loaders (the reliability contract):

    "A malformed-row fuzz test over the dataset loaders (wrong types, missing keys, empty strings,
    huge rows, invalid UTF-8, mixed formats): each file is either loaded correctly or rejected with
    the row number; no crash deep inside a trainer."

For every stage kind (text, sft, preference, prompt) a JSONL file is built from a few valid rows of
the layouts that kind accepts, then ONE random line is mutated (plus, sometimes, transparent
formatting noise: CRLF line endings, blank lines).  ``load_rows([path], kind, 0)`` must then either

* return rows that a TRL trainer can take: exactly the layout's columns in every row, no ``None``,
  non-empty strings, well-formed message lists, one Python type per column (``to_dataset`` works),
  strings encodable as UTF-8, one row per data line; or
* raise ``LlmkitError`` naming the file and the mutated line ("line N").

Any other exception is a failure.  Pure formatting variants (UTF-8 BOM, CRLF, blank lines, no final
newline) must load and give back the original rows.  Deterministic: ``random.Random`` per case.
"""

from __future__ import annotations

import copy
import json
import random
import re
import traceback
from pathlib import Path
from typing import Any

import pytest
from conftest import llmkit

from llmkit.config import LlmkitError
from llmkit.data import ROLES, load_rows, to_dataset

SEEDS = [0, 1, 2, 3, 4]
KINDS = ["text", "sft", "preference", "prompt"]


# --------------------------------------------------------------------------- valid rows per layout


def _conv(i: int) -> list[dict]:
    return [
        {"role": "system", "content": "Eres un asistente."},
        {"role": "user", "content": f"¿Cuánto es {i} + {i}?"},
        {"role": "assistant", "content": f"Es {2 * i}."},
    ]


def text_row(i: int) -> dict:
    return {"text": f"Párrafo número {i}: el gato duerme al sol. ñandú 🦤"}


def messages_row(i: int) -> dict:
    return {"messages": _conv(i)}


def pc_row(i: int) -> dict:
    return {"prompt": f"Pregunta {i}:", "completion": f" respuesta {i}."}


def pc_conv_row(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"Pregunta {i}"}], "completion": [{"role": "assistant", "content": f"Respuesta {i}"}]}


def pref_plain_row(i: int) -> dict:
    return {"prompt": f"Di algo {i}:", "chosen": f" algo bueno {i}", "rejected": f" algo malo {i}"}


def pref_implicit_row(i: int) -> dict:
    return {"chosen": f"Di algo {i}: bueno", "rejected": f"Di algo {i}: malo"}


def pref_conv_row(i: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"Di algo {i}"}],
        "chosen": [{"role": "assistant", "content": f"Bueno {i}"}],
        "rejected": [{"role": "assistant", "content": f"Malo {i}"}],
    }


def prompt_row(i: int) -> dict:
    return {"prompt": f"Calcula {i} * 3.", "answer": str(3 * i)}


def prompt_conv_row(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"Calcula {i} * 3."}], "answer": str(3 * i)}


# kind -> base layouts a file of that kind may be made of
BASES = {
    "text": [text_row],
    "sft": [messages_row, pc_row, pc_conv_row, text_row],
    "preference": [pref_plain_row, pref_implicit_row, pref_conv_row],
    "prompt": [prompt_row, prompt_conv_row],
}
# kind -> every valid layout of that kind (candidates for the "one row of another layout" mutation)
ALL_LAYOUT_ROWS = {
    "text": [text_row, messages_row, pc_row],
    "sft": [messages_row, pc_row, pc_conv_row, text_row],
    "preference": [pref_plain_row, pref_implicit_row, pref_conv_row],
    "prompt": [prompt_row, prompt_conv_row],
}

WRONG_VALUES = [0, 7, 1.5, -3, True, False, None, [], ["x"], [1, 2], {}, {"a": 1}, {"role": "user", "content": "x"}]
BAD_ROLES = ["bot", "", "USER", "Assistant ", 3, None, ["user"]]
BAD_CONTENT = [None, 1, 2.5, True, ["x"], {"text": "x"}, [{"type": "text", "text": "x"}]]
HUGE = ("palabra " * 131072)  # ~1 MiB


# --------------------------------------------------------------------------- mutations of one row


def _str_leaves(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every string value (not keys) inside a row."""
    if isinstance(obj, str):
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _str_leaves(v, path + (k,))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _str_leaves(v, path + (i,))]
    return []


def _set(obj: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _message_lists(row: dict) -> list[str]:
    return [k for k, v in row.items() if isinstance(v, list) and v and all(isinstance(m, dict) for m in v)]


def mut_drop_key(rng, row, kind):
    row.pop(rng.choice(sorted(row)))
    return json.dumps(row, ensure_ascii=False).encode()


def mut_wrong_type(rng, row, kind):
    row[rng.choice(sorted(row))] = copy.deepcopy(rng.choice(WRONG_VALUES))
    return json.dumps(row, ensure_ascii=False).encode()


def mut_empty_string(rng, row, kind):
    _set(row, rng.choice(_str_leaves(row)), "")
    return json.dumps(row, ensure_ascii=False).encode()


def mut_whitespace_string(rng, row, kind):
    _set(row, rng.choice(_str_leaves(row)), rng.choice([" ", " \t\n ", "\n", "\u3000", "\u00a0 "]))
    return json.dumps(row, ensure_ascii=False).encode()


def mut_huge_string(rng, row, kind):
    _set(row, rng.choice(_str_leaves(row)), HUGE)
    return json.dumps(row, ensure_ascii=False).encode()


def mut_invalid_utf8(rng, row, kind):
    line = json.dumps(row, ensure_ascii=False).encode()
    pos = rng.randrange(0, len(line) + 1)
    bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf0\x9f\x98"])
    return line[:pos] + bad + line[pos:]


def mut_truncated_json(rng, row, kind):
    line = json.dumps(row, ensure_ascii=False).encode("utf-8")
    # cut at a character boundary, never leaving a complete object
    text = line.decode()
    return text[: rng.randrange(1, len(text) - 1)].encode()


def mut_non_object(rng, row, kind):
    return rng.choice(
        [b"[1, 2]", b"42", b"-0.5", b'"text"', b"null", b"true", b"[]", json.dumps([row]).encode(), json.dumps(list(row.values())).encode()]
    )


def mut_lone_surrogate(rng, row, kind):
    # a JSON "\ud800" escape is valid JSON and valid UTF-8 on disk, but not encodable text
    _set(row, rng.choice(_str_leaves(row)), rng.choice(["ok \ud800", "\udfff fin", "a\ud83db"]))
    return json.dumps(row, ensure_ascii=True).encode()


def mut_extra_key(rng, row, kind):
    row[rng.choice(["foo", "id", "__line__", "meta"])] = rng.choice([1, "x", None, {"k": [1]}])
    return json.dumps(row, ensure_ascii=False).encode()


def mut_message(rng, row, kind):
    """Break one message of a messages list (role/content wrong or missing, not a dict, empty list)."""
    cols = _message_lists(row)
    if not cols:  # plain row: turn one text field into a (broken) message list instead
        col = rng.choice([k for k, v in row.items() if isinstance(v, str)])
        row[col] = [{"role": "assistant", "content": "ok"}]
        cols = [col]
    col = rng.choice(cols)
    msgs = row[col]
    i = rng.randrange(len(msgs))
    what = rng.choice(["wrong_role", "missing_content", "content_type", "missing_role", "not_dict", "empty_list", "extra_only"])
    if what == "wrong_role":
        msgs[i]["role"] = rng.choice(BAD_ROLES)
    elif what == "missing_content":
        msgs[i].pop("content")
    elif what == "content_type":
        msgs[i]["content"] = copy.deepcopy(rng.choice(BAD_CONTENT))
    elif what == "missing_role":
        msgs[i].pop("role")
    elif what == "not_dict":
        msgs[i] = rng.choice(["hola", 3, None, ["user", "hola"]])
    elif what == "empty_list":
        row[col] = []
    else:
        msgs[i] = {"text": "hola"}
    return json.dumps(row, ensure_ascii=False).encode()


def mut_mix_layout(rng, row, kind, base=None):
    others = [f for f in ALL_LAYOUT_ROWS[kind] if f is not base] or ALL_LAYOUT_ROWS[kind]
    return json.dumps(rng.choice(others)(rng.randrange(100)), ensure_ascii=False).encode()


MUTATIONS = {
    "drop_key": mut_drop_key,
    "wrong_type": mut_wrong_type,
    "empty_string": mut_empty_string,
    "whitespace_string": mut_whitespace_string,
    "huge_string": mut_huge_string,
    "invalid_utf8": mut_invalid_utf8,
    "truncated_json": mut_truncated_json,
    "non_object": mut_non_object,
    "lone_surrogate": mut_lone_surrogate,
    "extra_key": mut_extra_key,
    "bad_message": mut_message,
    "mix_layout": mut_mix_layout,
}
# formatting-only variants: the file must load and give back the original rows
FORMAT_ONLY = ["bom", "crlf", "blank_lines", "no_final_newline", "bom_crlf_blank"]


# --------------------------------------------------------------------------- building a case


def _blank_line(rng) -> bytes:
    return rng.choice([b"", b" ", b"\t", b"  \t ", b"\r"])


def build_case(kind: str, mutation: str, seed: int, tmp: Path):
    """Write the case file; return (path, data line count, mutated line number or None, original rows, details)."""
    rng = random.Random(f"{kind}/{mutation}/{seed}")
    base = rng.choice(BASES[kind])
    n = rng.choice([2, 3, 5, 8, 60])
    rows = [base(i) for i in range(n)]
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    m = None
    crlf = bom = False
    blanks = 0
    if mutation in MUTATIONS:
        m = rng.randrange(n)
        row = copy.deepcopy(rows[m])
        fn = MUTATIONS[mutation]
        lines[m] = fn(rng, row, kind, base) if fn is mut_mix_layout else fn(rng, row, kind)
        crlf = rng.random() < 0.3
        blanks = rng.choice([0, 0, 1, 3])
    else:
        bom = "bom" in mutation
        crlf = "crlf" in mutation
        blanks = rng.randint(1, 4) if "blank" in mutation else 0
    for _ in range(blanks):  # blank / whitespace-only lines anywhere; keep track of the mutated line
        at = rng.randrange(len(lines) + 1)
        lines.insert(at, _blank_line(rng))
        if m is not None and at <= m:
            m += 1
    eol = b"\r\n" if crlf else b"\n"
    data = eol.join(lines) + (b"" if mutation == "no_final_newline" else eol)
    if bom:
        data = b"\xef\xbb\xbf" + data
    path = tmp / f"{kind}_{mutation}_s{seed}.jsonl"
    path.write_bytes(data)
    details = (
        f"kind={kind} mutation={mutation} seed={seed} base={base.__name__} rows={n} crlf={crlf} bom={bom} blanks={blanks}"
        + (f"\nmutated line {m + 1}: {lines[m][:300]!r}{' ...' if len(lines[m]) > 300 else ''}" if m is not None else "")
    )
    return path, n, (m + 1 if m is not None else None), rows, details


# --------------------------------------------------------------------------- what TRL can take


def _utf8_ok(obj: Any) -> bool:
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(obj, dict):
        return all(_utf8_ok(k) and _utf8_ok(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_utf8_ok(v) for v in obj)
    return True


def _check_msgs(msgs: Any, where: str, assistant_last: bool) -> None:
    assert isinstance(msgs, list) and msgs, f"{where}: not a non-empty message list: {msgs!r:.200}"
    for msg in msgs:
        assert isinstance(msg, dict), f"{where}: message is not a dict: {msg!r:.200}"
        assert isinstance(msg.get("role"), str) and msg["role"] in ROLES, f"{where}: bad role {msg.get('role')!r}"
        assert isinstance(msg.get("content"), str), f"{where}: content is not a str: {msg.get('content')!r:.200}"
    if assistant_last:
        assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"].strip(), f"{where}: last message not a non-empty assistant turn"


def _check_text(v: Any, where: str) -> None:
    assert isinstance(v, str) and v.strip(), f"{where}: not a non-empty str: {v!r:.200}"


def check_trl_rows(rows: list[dict], kind: str, n_data_lines: int) -> None:
    assert len(rows) == n_data_lines, f"{len(rows)} rows returned for {n_data_lines} data lines (rows silently dropped/added)"
    keys = {frozenset(r) for r in rows}
    assert len(keys) == 1, f"rows do not share one set of columns: {[sorted(k) for k in keys]}"
    cols = set(next(iter(keys)))
    layouts = {
        "text": [{"text"}],
        "sft": [{"messages"}, {"prompt", "completion"}, {"text"}],
        "preference": [{"prompt", "chosen", "rejected"}, {"chosen", "rejected"}],
        "prompt": None,
    }[kind]
    if kind == "prompt":
        assert "prompt" in cols, f"prompt layout without 'prompt': {sorted(cols)}"
    else:
        assert cols in layouts, f"columns {sorted(cols)} are none of the {kind} layouts {[sorted(x) for x in layouts]}"
    for i, r in enumerate(rows):
        where = f"returned row {i}"
        for c, v in r.items():
            assert v is not None, f"{where}: column {c!r} is None (TRL/reward functions get None)"
        assert _utf8_ok(r), f"{where}: holds a string that is not encodable as UTF-8 (lone surrogate): {r!r:.300}"
        if cols == {"text"}:
            _check_text(r["text"], where)
        elif cols == {"messages"}:
            _check_msgs(r["messages"], where, True)
        elif kind == "sft":  # prompt/completion: both plain or both conversational
            p, c = r["prompt"], r["completion"]
            assert type(p) is type(c), f"{where}: prompt is {type(p).__name__} but completion is {type(c).__name__}"
            if isinstance(p, list):
                _check_msgs(p, where, False)
                _check_msgs(c, where, True)
            else:
                _check_text(p, where)
                _check_text(c, where)
        elif kind == "preference":
            ch, rj = r["chosen"], r["rejected"]
            assert type(ch) is type(rj), f"{where}: chosen is {type(ch).__name__} but rejected is {type(rj).__name__}"
            if "prompt" in r:
                assert type(r["prompt"]) is type(ch), f"{where}: prompt is {type(r['prompt']).__name__} but chosen is {type(ch).__name__}"
            for c in r:
                if isinstance(r[c], list):
                    _check_msgs(r[c], f"{where} {c}", c != "prompt")
                else:
                    _check_text(r[c], f"{where} {c}")
        else:  # prompt
            if isinstance(r["prompt"], list):
                _check_msgs(r["prompt"], where, False)
            else:
                _check_text(r["prompt"], where)
    for c in cols:  # one Python type per column, as an Arrow column needs
        types = {type(r[c]).__name__ for r in rows}
        assert len(types) == 1, f"column {c!r} mixes types across rows: {sorted(types)}"
    try:
        to_dataset(rows)  # what every trainer does with the rows next
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"load_rows accepted rows that to_dataset() cannot take: {type(exc).__name__}: {str(exc)[:300]}") from None


def _strip_line(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


# --------------------------------------------------------------------------- the fuzz cases

CASES = [(k, m, s) for k in KINDS for m in list(MUTATIONS) + FORMAT_ONLY for s in SEEDS]


@pytest.mark.parametrize("kind,mutation,seed", CASES, ids=[f"{k}-{m}-s{s}" for k, m, s in CASES])
def test_malformed_row(tmp_path, kind, mutation, seed):
    path, n, line, original, details = build_case(kind, mutation, seed, tmp_path)
    try:
        rows, _prov = load_rows([str(path)], kind, 0)
    except LlmkitError as exc:
        msg = str(exc)
        assert line is not None, f"a formatting-only variant was rejected: {msg}\n{details}"
        assert str(path) in msg, f"error does not name the file: {msg}\n{details}"
        assert re.search(rf"\bline {line}\b", msg), f"error does not name the mutated line {line}: {msg}\n{details}"
        return
    except Exception as exc:  # noqa: BLE001 - anything else is a crash
        tb = "".join(traceback.format_exception(exc)[-4:])
        pytest.fail(f"{type(exc).__name__} escaped load_rows (expected rows or LlmkitError):\n{tb}\n{details}")
    try:
        check_trl_rows(rows, kind, n)
    except AssertionError as exc:
        raise AssertionError(f"load_rows returned rows a trainer cannot take: {exc}\n{details}") from None
    if line is None:  # formatting-only: exactly the original rows back
        assert _strip_line(rows) == original, f"formatting changed the rows\n{details}"


def test_case_count():
    # a guard so that the generator above keeps its coverage
    assert len(CASES) == len(KINDS) * (len(MUTATIONS) + len(FORMAT_ONLY)) * len(SEEDS) == 340


# --------------------------------------------------------------------------- end to end through the CLI


def _lines(rows: list[dict]) -> list[bytes]:
    return [json.dumps(r, ensure_ascii=False).encode() for r in rows]


CLI_CASES = {
    "invalid_utf8": lambda ls: ls.__setitem__(2, ls[2][:20] + b"\xff\xfe" + ls[2][20:]) or 3,
    "truncated_json": lambda ls: ls.__setitem__(3, ls[3][:-5]) or 4,
    "content_int": lambda ls: ls.__setitem__(
        1, json.dumps({"messages": [{"role": "user", "content": "hola"}, {"role": "assistant", "content": 5}]}).encode()) or 2,
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_sft_rejects_malformed_file(tmp_path, capsys, base_model, case):
    lines = _lines([messages_row(i) for i in range(5)])
    bad_line = CLI_CASES[case](lines)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "o"
    try:
        rc = llmkit("sft", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{bad}]")
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"uncaught {type(exc).__name__} from the CLI: {''.join(traceback.format_exception(exc)[-4:])}")
    cap = capsys.readouterr()
    assert rc == 2, f"rc={rc}\nstderr:\n{cap.err[-2000:]}"
    assert "Traceback" not in cap.out + cap.err
    assert f"line {bad_line}" in cap.err and "bad.jsonl" in cap.err, cap.err[-2000:]
    assert not out.exists() and not out.with_name("o.partial").exists()
