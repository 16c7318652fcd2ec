"""`llmkit chat URL` picks the trained model (the adapter of a LoRA run) from the server's
/v1/models list, says which model it talks to, and decodes greedily by default."""

from __future__ import annotations

import io

import pytest

from llmkit import cli, serving
from llmkit.config import LlmkitError


def vllm_models(base: str, *adapters: str) -> list[dict]:
    """/v1/models as vLLM's OpenAI server writes it (its own response classes, model_dump())."""
    models = pytest.importorskip("vllm.entrypoints.serve.engine.protocol", reason="vLLM (its response classes) is not installed")
    card, perm = models.ModelCard, models.ModelPermission
    cards = [card(id=base, root=f"/runs/{base}", max_model_len=128, permission=[perm()])]
    cards += [card(id=a, root=f"/runs/{a}", parent=base, permission=[perm()]) for a in adapters]
    return models.ModelList(data=cards).model_dump()["data"]


def test_the_adapter_of_a_lora_run_by_default():
    served = vllm_models("pretrain", "sft")
    assert [m["id"] for m in served] == ["pretrain", "sft"]  # the base comes first: the former default
    assert serving.choose_chat_model(served, None) == ("sft", " (LoRA adapter over pretrain)", None)
    assert serving.choose_chat_model(served, "pretrain") == ("pretrain", " (base model)", None)


def test_several_adapters_first_one_with_a_note():
    name, what, note = serving.choose_chat_model(vllm_models("pretrain", "sft", "dpo"), None, "http://h:1")
    assert (name, what) == ("sft", " (LoRA adapter over pretrain)")
    assert "2 adapters (sft, dpo)" in note and "--model" in note


def test_no_adapter_and_unknown_names():
    assert serving.choose_chat_model(vllm_models("merged"), None) == ("merged", "", None)
    plain = [{"id": "a", "object": "model"}, {"id": "b", "object": "model"}]  # e.g. `transformers serve`
    name, _, note = serving.choose_chat_model(plain, None)
    assert name == "a" and "2 models" in note
    with pytest.raises(LlmkitError, match="does not serve 'dpo'; it serves: pretrain, sft"):
        serving.choose_chat_model(vllm_models("pretrain", "sft"), "dpo")
    with pytest.raises(LlmkitError, match="serves no model"):
        serving.choose_chat_model([], None)


class _FakeModels:
    def __init__(self, data):
        import openai.types

        self.data = [openai.types.Model.model_validate(m) for m in data]


def test_chat_loop_prints_the_model_and_sends_greedy_requests(monkeypatch):
    openai = pytest.importorskip("openai")
    sent = []

    class Client:
        def __init__(self, **kwargs):
            self.models = type("M", (), {"list": lambda _self: _FakeModels(vllm_models("pretrain", "sft"))})()
            self.chat = type("C", (), {"completions": type("CC", (), {"create": lambda _self, **kw: sent.append(kw) or []})()})()

    monkeypatch.setattr(openai, "OpenAI", Client)
    out = io.StringIO()
    lines = ["¿Cuál es la capital de Perú?"]

    def read(_prompt):
        if not lines:
            raise EOFError  # Ctrl-D ends the chat
        return lines.pop(0)

    assert serving._chat_loop("http://127.0.0.1:8000", None, None, None, 32, serving.CHAT_TEMPERATURE, read, out) == 0
    assert "chatting with sft (LoRA adapter over pretrain) at http://127.0.0.1:8000" in out.getvalue()
    assert sent and sent[0]["model"] == "sft" and sent[0]["temperature"] == 0


def test_cli_default_temperature_is_greedy():
    sub = next(a for a in cli._parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    chat = sub.choices["chat"]
    assert chat.get_default("temperature") == 0.0 == serving.CHAT_TEMPERATURE
