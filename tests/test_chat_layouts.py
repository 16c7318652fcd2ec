"""ShareGPT (``conversations`` of ``from``/``value``) converted with ``format: sharegpt``; a file
in a known layout (ShareGPT, Alpaca, Dolly) without its ``format`` is refused with the hint."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import llmkit, write_jsonl

from llmkit.config import LlmkitError
from llmkit.data import load_rows, to_dataset

CHAT = [
    {"conversations": [{"from": "system", "value": "Eres un asistente útil."}, {"from": "human", "value": "¿Capital de Perú?"},
                       {"from": "gpt", "value": "Lima."}, {"from": "human", "value": "¿Y de Chile?"},
                       {"from": "gpt", "value": "Santiago."}]},
    {"conversations": [{"from": "human", "value": "Hola"}, {"from": "gpt", "value": "¡Hola! ¿En qué te ayudo?"}], "id": "x2"},
]


def test_sharegpt_is_converted_with_role_mapping(tmp_path):
    f = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    rows, prov = load_rows([{"path": str(f), "format": "sharegpt"}], "sft")
    assert rows[0] == {"messages": [
        {"role": "system", "content": "Eres un asistente útil."}, {"role": "user", "content": "¿Capital de Perú?"},
        {"role": "assistant", "content": "Lima."}, {"role": "user", "content": "¿Y de Chile?"},
        {"role": "assistant", "content": "Santiago."},
    ]}
    assert rows[1] == {"messages": [{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "¡Hola! ¿En qué te ayudo?"}]}
    assert prov[0]["rows"] == 2
    to_dataset(rows)  # one Arrow schema


def test_sharegpt_unknown_speaker_is_refused_naming_the_line(tmp_path):
    bad = [CHAT[1], {"conversations": [{"from": "human", "value": "Hola"}, {"from": "bot", "value": "Hola"}]}]
    f = write_jsonl(tmp_path / "chat.jsonl", bad)
    with pytest.raises(LlmkitError) as e:
        load_rows([{"path": str(f), "format": "sharegpt"}], "sft")
    msg = str(e.value)
    assert msg.startswith(f"{f} line 2: message 2 of 'conversations' has an unknown speaker 'from': 'bot'"), msg
    assert "human" in msg and "gpt" in msg


@pytest.mark.parametrize(("row", "needle"), [
    ({"conversations": []}, "non-empty list"),
    ({"conversations": "hola"}, "non-empty list"),
    ({"conversations": [{"from": "human", "text": "hola"}]}, "message 1 of 'conversations' needs a string 'from' and a string 'value'"),
    ({"conversations": [{"from": "human", "value": "hola"}]}, "the last message of 'messages' must be the assistant's"),
    ({"messages": [{"role": "user", "content": "x"}]}, "format sharegpt needs 'conversations'"),
])
def test_sharegpt_malformed_rows_name_the_line(tmp_path, row, needle):
    f = write_jsonl(tmp_path / "chat.jsonl", [CHAT[1], row])
    with pytest.raises(LlmkitError) as e:
        load_rows([{"path": str(f), "format": "sharegpt"}], "sft")
    assert "line 2" in str(e.value) and needle in str(e.value), str(e.value)


@pytest.mark.parametrize(("rows", "fmt"), [
    (CHAT, "sharegpt"),
    ([{"instruction": "Traduce 'hola'", "input": "", "output": "hello"}], "alpaca"),
    ([{"instruction": "Resume", "context": "Un texto.", "response": "Texto."}], "dolly"),
])
def test_known_layout_without_format_suggests_it(tmp_path, rows, fmt):
    f = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(LlmkitError) as e:
        load_rows([str(f)], "sft")
    msg = str(e.value)
    assert msg.startswith(f"{f} line 1: needs column(s)") and f"; add format: {fmt} to this dataset's entry" in msg, msg
    rows_ok, _ = load_rows([{"path": str(f), "format": fmt}], "sft")
    assert rows_ok[0]["messages"][-1]["role"] == "assistant"


def test_no_hint_for_an_unknown_layout(tmp_path):
    f = write_jsonl(tmp_path / "data.jsonl", [{"pregunta": "x", "respuesta": "y"}])
    with pytest.raises(LlmkitError) as e:
        load_rows([str(f)], "sft")
    assert "add format" not in str(e.value)


def test_sft_stage_refuses_undeclared_sharegpt_with_one_line(tmp_path, base_model, capsys):
    f = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    out = tmp_path / "runs" / "sft"
    assert llmkit("sft", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{f}]", "--max_steps", "1") == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("llmkit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "looks like ShareGPT" in lines[0] and "add format: sharegpt" in lines[0]
    assert not out.exists() and not Path(str(out) + ".partial").exists()
