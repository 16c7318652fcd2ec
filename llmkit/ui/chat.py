"""Streaming answers for the Chat tab: a run loaded in this process with transformers (as
``Run.generate`` loads it: a LoRA run over its base, the run's chat template), or a server the
Serve tab started (``llmkit serve``: vLLM, or ``transformers serve``) through the openai client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _loaded(path: str):
    from llmkit import Run

    with _LOCK:
        if path not in _MODELS:
            run = Run(path)
            model = run.load_model()
            model.eval()
            _MODELS[path] = (model, run.load_tokenizer())
        return _MODELS[path]


def conversation(history: list[dict[str, Any]], system: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for m in history:
        content = m.get("content")
        if isinstance(content, list):  # gradio may hand back content parts
            content = " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
        msgs.append({"role": m["role"], "content": str(content)})
    return msgs


def stream_local(path: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> Iterator[str]:
    """The answer so far, growing token by token (greedy at temperature 0, as `llmkit chat`)."""
    import torch
    from transformers import TextIteratorStreamer

    from llmkit.modeling import prompt_text, stop_token_ids

    model, tok = _loaded(path)
    prompt = messages if tok.chat_template else "\n".join(m["content"] for m in messages)
    enc = tok(prompt_text(tok, prompt), return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = {"max_new_tokens": int(max_tokens), "pad_token_id": tok.pad_token_id, "eos_token_id": stop_token_ids(tok),
              "streamer": streamer}
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=float(temperature))
    else:
        kwargs.update(do_sample=False)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(**enc, **kwargs)
        except BaseException as exc:  # shown in the chat instead of a stuck answer
            errors.append(exc)
            streamer.on_finalized_text("", stream_end=True)

    threading.Thread(target=work, daemon=True).start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    if errors:
        raise errors[0]
    if not text:
        yield ""


def server_model(url: str, run: str, timeout: float = 1.0) -> str | None:
    """The model name to ask the server at URL for, once it answers (None before): the one its
    /v1/models lists (vLLM: a LoRA run's adapter, not its base; llama.cpp: the run), or, for
    `transformers serve`, whose list holds only the hub cache, the path it was started on (a LoRA
    run: its merged copy, which `llmkit serve` made before starting it)."""
    import requests

    try:
        r = requests.get(url.rstrip("/") + "/v1/models", timeout=timeout)
        if r.status_code != 200:
            return None
        served = r.json().get("data") or []
        if not served and requests.get(url.rstrip("/") + "/health", timeout=timeout).status_code != 200:
            return None  # transformers serve: ready when /health says so
    except (requests.RequestException, ValueError, AttributeError):
        return None
    if served:
        from llmkit.serving import choose_chat_model

        return choose_chat_model(served, None, url)[0]
    from llmkit.modeling import is_adapter_dir, merged_copy

    return merged_copy(run) if is_adapter_dir(run) else run


def stream_server(url: str, model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int,
                  api_key: str | None = None, extra: dict[str, Any] | None = None) -> Iterator[str]:
    """The answer so far from an OpenAI-compatible server (``extra``: sampling fields of that
    server, e.g. llama.cpp's repeat_penalty)."""
    from openai import OpenAI

    client = OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none", max_retries=0)
    text = ""
    for chunk in client.chat.completions.create(model=model, messages=messages, temperature=float(temperature),
                                                max_tokens=int(max_tokens), stream=True, extra_body=extra or None):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            yield text
    if not text:
        yield ""
