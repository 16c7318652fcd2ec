"""`llmkit serve RUN --engine llama.cpp`: llama-cpp-python's OpenAI server on the run's GGUF
(exported once into the cache), behind the same API-key rule as vLLM; `llmkit chat` talks to it."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("llama_cpp")

from llmkit.config import LlmkitError  # noqa: E402
from llmkit.export import converter_dir  # noqa: E402

if not (converter_dir() / "convert_hf_to_gguf.py").is_file():
    pytest.skip("llama.cpp's converter is not installed (make setup)", allow_module_level=True)


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory, lora_runs):
    from test_export import spread_lora

    # A and B seeded (not the trained values, which move with SFT's defaults): greedy text of whole words, valid UTF-8
    return spread_lora(lora_runs["sft"], tmp_path_factory.mktemp("serve_lora") / "sft", seed=2, scale=0.3,
                       matrices=("lora_A", "lora_B"))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _greedy_answer(run, text: str, n: int) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmkit.modeling import adapter_base, load_tokenizer

    tok = load_tokenizer(str(run))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter_base(str(run))), str(run)).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id])
    new = [t for t in out[0, len(ids):].tolist() if t not in (tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


@pytest.mark.slow
def test_llama_cpp_server_answers_the_openai_client_with_the_runs_greedy_text(lora_sft, cache):
    import openai

    from llmkit.serving import _chat_loop, build_server, gguf_for

    run = lora_sft
    server, plan, engine = build_server(str(run), engine="llama.cpp", api_key="s3cret", port=None)
    assert engine == "llama.cpp" and plan.model.endswith("-f16.gguf") and str(cache) in plan.model
    assert "--host" in server.cmd and server.cmd[server.cmd.index("--host") + 1] == "127.0.0.1"
    assert "s3cret" not in " ".join(server.cmd) and server.env["API_KEY"] == "s3cret"
    assert gguf_for(str(run)) == plan.model  # exported once: the cached export is reused
    question = "¿Cuánto es 7 más 5?"
    with server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in client.models.list().data] == [plan.name]
        # llama-cpp-python's server applies repeat_penalty 1.1 unless told otherwise (vLLM and transformers: none)
        r = client.chat.completions.create(model=plan.name, messages=[{"role": "user", "content": question}],
                                           max_tokens=10, temperature=0, extra_body={"repeat_penalty": 1.0})
        want = _greedy_answer(run, question, 10)
        assert len(set(want.split())) >= 2, f"a degenerate answer {want!r} would prove nothing"
        assert "\ufffd" not in want  # a cut UTF-8 sequence: transformers writes U+FFFD, llama-cpp-python drops the bytes
        assert r.choices[0].message.content == want
        default = client.chat.completions.create(model=plan.name, messages=[{"role": "user", "content": question}],
                                                 max_tokens=10, temperature=0).choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
        out = io.StringIO()
        lines = iter([question])

        def fake_input(prompt):
            try:
                return next(lines)
            except StopIteration:
                raise EOFError from None

        assert _chat_loop(server.url, None, "s3cret", None, 10, 0.0, fake_input, out) == 0
        assert default and f"{plan.name}> {default}" in out.getvalue()  # llmkit chat streams the server's answer


def test_llama_cpp_engine_refuses_adapters_and_non_gguf_files(lora_runs, cache, tmp_path):
    from llmkit.serving import build_server

    with pytest.raises(LlmkitError, match="serves one model: drop --adapter"):
        build_server(str(lora_runs["sft"]), adapters=[f"b={lora_runs['sft2']}"], engine="llama.cpp")
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(LlmkitError, match="not a .gguf"):
        build_server(str(f), engine="llama.cpp")
    with pytest.raises(LlmkitError, match="--engine 'llamacpp'"):
        build_server(str(lora_runs["sft"]), engine="llamacpp")
