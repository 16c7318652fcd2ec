"""`llmkit export --format gguf`: the GGUF that llama.cpp loads is the run's model.

Two models, each exported to f16 and q8_0 with llama.cpp's own converter and quantizer:
  * the demo's kind of SFT run: a LoRA over a tiny Llama with llmkit's own byte-level BPE
    tokenizer (conftest's lora_runs["sft"] with seeded LoRA matrices, spread_lora, so that greedy text varies);
  * a random Qwen2-architecture model with a Qwen-style tokenizer (Qwen2's split pre-tokenizer,
    NFC, trained here on the project corpus) and TRL's Qwen2.5 chat template (default system prompt).

Checked against transformers (the run itself: PeftModel over its base for the LoRA run):
llama.cpp tokenizes the rendered chat prompts to the same ids; greedy continuations are equal
token for token; per-token log-probs agree within F16_LOGPROB_TOL (q8_0 within Q8_LOGPROB_TOL);
the chat template stored in the GGUF, rendered by llama-cpp-python's Jinja formatter, gives the
exact prompt apply_chat_template gives; the Modelfile's TEMPLATE rendered by Go's text/template
(Ollama's template engine) gives it too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import llmkit, read_jsonl

pytest.importorskip("llama_cpp")

from llmkit.config import LlmkitError  # noqa: E402
from llmkit.export import ExportArgs, converter_dir, export, llama_cpp_pre_tokenizer  # noqa: E402

if not (converter_dir() / "convert_hf_to_gguf.py").is_file():
    pytest.skip("llama.cpp's converter is not installed (make setup)", allow_module_level=True)

# |log p(llama.cpp) - log p(transformers)| of every token of prompt + greedy continuation, given the tokens before it
F16_LOGPROB_TOL = 2e-2  # measured: up to 0.004
Q8_LOGPROB_TOL = 2e-1  # measured: up to 0.13 (the random Qwen2, peaked)
NEW_TOKENS = 12

PROMPTS = ["¿Cuánto es 7 más 5?", "Escribe una frase sobre el mar.", "¿Qué día es hoy?", "Resume: el gato duerme al sol."]


def conversations() -> list[list[dict]]:
    a = [{"role": "user", "content": "¿Cuánto es 2 más 3?"}, {"role": "assistant", "content": "Veamos: 2 + 3 = 5."},
         {"role": "user", "content": "¿Y 4 por 5?"}]
    return [a, [{"role": "system", "content": "Responde en español, con una frase."}, *a], a[:1],
            [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": "Hola\n¿qué tal?"}]]


TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory, corpus) -> Path:
    """A random tiny Qwen2 with a Qwen-style tokenizer trained on the corpus."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from llmkit.export import QWEN2_SPLIT

    out = tmp_path_factory.mktemp("qwen") / "model"
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    texts = [r["text"] for r in read_jsonl(corpus)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=specials[1:], clean_up_tokenization_spaces=False)
    hf.chat_template = (TRL_TEMPLATES / "qwen2_5.jinja").read_text()
    cfg = Qwen2Config(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=False,
                      eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id, bos_token_id=None)
    torch.manual_seed(3)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaked like a trained model: no near-ties for 16-bit rounding to flip
    model.save_pretrained(out)
    hf.save_pretrained(out)
    return out


def spread_lora(run: Path, dest: Path, seed: int = 0, scale: float = 0.5, matrices: tuple[str, ...] = ("lora_B",)) -> Path:
    """A copy of the LoRA run RUN whose lora_B matrices are seeded random (A stays as trained).

    Six SFT steps over the random tiny base leave B near its zero init, and the model's greedy text
    is one repeated token ('\n'): equal in any two engines without saying anything.  With B
    spread the adapter changes every layer, and greedy text varies."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, dest)
    weights = load_file(dest / "adapter_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for k, v in weights.items():
        if any(m in k for m in matrices):
            weights[k] = torch.randn(v.shape, generator=g, dtype=v.dtype) * scale
    save_file(weights, dest / "adapter_model.safetensors", metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory, lora_runs) -> Path:
    # A and B seeded, not as trained (the trained values move with SFT's defaults): the same model in every session
    return spread_lora(lora_runs["sft"], tmp_path_factory.mktemp("lora_sft") / "sft", seed=2, scale=0.3, matrices=("lora_A", "lora_B"))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, lora_sft, qwen_model) -> dict[str, tuple[Path, Path]]:
    """{kind: (source, export dir)} with <name>-f16.gguf and <name>-q8_0.gguf in each."""
    d = tmp_path_factory.mktemp("exports")
    out = {}
    for kind, src in (("llama-lora", lora_sft), ("qwen2", qwen_model)):
        assert llmkit("export", src, "--format", "gguf", "--quant", "f16", "q8_0", "--output_dir", d / kind) == 0
        out[kind] = (src, d / kind)
    return out


def _gguf(export_dir: Path, quant: str) -> Path:
    (f,) = export_dir.glob(f"*-{quant}.gguf")
    return f


def _hf(src: Path):
    from transformers import AutoModelForCausalLM

    from llmkit.modeling import adapter_base, is_adapter_dir, load_tokenizer

    tok = load_tokenizer(str(src))
    if is_adapter_dir(str(src)):
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter_base(str(src))), str(src))
    else:
        model = AutoModelForCausalLM.from_pretrained(src)
    return tok, model.eval()


def _llama(path: Path):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=256, logits_all=True, n_threads=1, verbose=False, seed=0)


def _hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[list[float]]]:
    """Greedy continuation and the log-probs (full vocab) at every position of prompt + continuation."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n, pad_token_id=0)
        seq = out[0].tolist()
        logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
    return seq[len(ids):], logp.tolist()


def _llama_greedy(llm, ids: list[int], n: int) -> tuple[list[int], list[list[float]]]:
    import numpy as np

    llm.reset()
    seq = list(ids)
    for _ in range(n):  # greedy by hand: argmax of the last position, no sampler in between
        llm.reset()
        llm.eval(seq)
        seq.append(int(np.argmax(llm.scores[len(seq) - 1])))
    return seq[len(ids):], _llama_logprobs(llm, seq)


def _llama_logprobs(llm, seq: list[int]) -> list[list[float]]:
    """llama.cpp's log-softmax at every position of seq, teacher-forced (one eval of the whole sequence)."""
    import numpy as np

    llm.reset()
    llm.eval(seq)
    s = np.asarray(llm.scores[: len(seq)], dtype=np.float64)
    m = s.max(-1, keepdims=True)
    return (s - m - np.log(np.exp(s - m).sum(-1, keepdims=True))).tolist()


def _token_gap(a, b, seq: list[int]) -> float:
    """max over positions i of |a[i][seq[i+1]] - b[i][seq[i+1]]|: the per-token log-prob gap."""
    import numpy as np

    a, b, nxt = np.asarray(a), np.asarray(b), np.asarray(seq[1:])
    rows = np.arange(len(nxt))
    return float(np.abs(a[rows, nxt] - b[rows, nxt]).max())


def _prompt_ids(tok, text: str) -> list[int]:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True,
                                   return_dict=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama-lora", "qwen2"])
def test_gguf_f16_greedy_and_logprobs_match_transformers(exports, kind):

    src, out = exports[kind]
    tok, model = _hf(src)
    llm = _llama(_gguf(out, "f16"))
    worst, seen = 0.0, []
    for text in PROMPTS:
        ids = _prompt_ids(tok, text)
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ids, f"{kind}: llama.cpp tokenizes {rendered!r} otherwise"
        hf_new, hf_logp = _hf_greedy(model, ids, NEW_TOKENS)
        ll_new, ll_logp = _llama_greedy(llm, ids, NEW_TOKENS)
        seen.append(tuple(hf_new))
        assert ll_new == hf_new, f"{kind} {text!r}: llama.cpp {tok.decode(ll_new)!r} vs transformers {tok.decode(hf_new)!r}"
        worst = max(worst, _token_gap(ll_logp, hf_logp, ids + hf_new))
    # the continuations depend on the prompt and are not one token: their equality says something
    assert len(set(seen)) >= 3 and len({t for c in seen for t in c}) >= 4, f"{kind}: degenerate continuations {seen}"
    assert worst < F16_LOGPROB_TOL, f"{kind}: f16 log-probs differ by up to {worst:.4f}"
    print(f"{kind}: f16 max |Δ log p| = {worst:.5f}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama-lora", "qwen2"])
def test_gguf_q8_logprobs_within_looser_bound(exports, kind):
    src, out = exports[kind]
    tok, model = _hf(src)
    llm = _llama(_gguf(out, "q8_0"))
    worst = 0.0
    for text in PROMPTS:
        ids = _prompt_ids(tok, text)
        hf_new, hf_logp = _hf_greedy(model, ids, NEW_TOKENS)
        logp = _llama_logprobs(llm, ids + hf_new)  # teacher-forced on transformers' continuation
        worst = max(worst, _token_gap(logp, hf_logp, ids + hf_new))
    assert worst < Q8_LOGPROB_TOL, f"{kind}: q8_0 log-probs differ by up to {worst:.4f}"
    print(f"{kind}: q8_0 max |Δ log p| = {worst:.5f}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama-lora", "qwen2"])
def test_gguf_chat_template_renders_the_runs_prompts(exports, kind):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    src, out = exports[kind]
    tok, _ = _hf(src)
    meta = _llama(_gguf(out, "f16")).metadata  # what llama.cpp read from the file
    template = meta["tokenizer.chat_template"]
    assert "{% generation" not in template  # transformers' training-only tag is gone, the rest is the run's template
    assert meta["tokenizer.ggml.pre"] == ("gpt-2" if kind == "llama-lora" else "qwen2")
    assert tok.convert_ids_to_tokens(int(meta["tokenizer.ggml.eos_token_id"])) == tok.eos_token
    fmt = Jinja2ChatFormatter(template=template, eos_token=tok.eos_token, bos_token=tok.bos_token or "")
    for conv in conversations():
        want = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert fmt(messages=conv).prompt == want


GO_RENDER = r"""
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var in struct {
		Template string      `json:"template"`
		Convs    [][]Message `json:"convs"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(in.Template))
	out := []string{}
	for _, c := range in.Convs {
		var b []byte
		w := &buf{&b}
		if err := t.Execute(w, map[string]any{"Messages": c}); err != nil {
			panic(err)
		}
		out = append(out, string(b))
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

type buf struct{ b *[]byte }

func (w *buf) Write(p []byte) (int, error) { *w.b = append(*w.b, p...); return len(p), nil }
"""


def parse_modelfile(text: str) -> dict:
    """TEMPLATE, SYSTEM and the stop PARAMETERs of a Modelfile (Ollama's documented syntax)."""
    import re

    out = {"stop": re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)}
    for key in ("TEMPLATE", "SYSTEM"):
        m = re.search(rf'^{key} """(.*?)"""', text, re.M | re.S)
        out[key] = m.group(1) if m else None
    out["FROM"] = re.search(r"^FROM (.+)$", text, re.M).group(1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama-lora", "qwen2"])
def test_modelfile_template_renders_the_runs_prompts_in_go(exports, kind, tmp_path):
    """Go's text/template (Ollama's engine) renders the Modelfile's TEMPLATE; Ollama puts the
    Modelfile's SYSTEM first when a conversation has no system message."""
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain (apt-get install golang-go): Go's text/template renders Ollama's templates")
    src, out = exports[kind]
    tok, _ = _hf(src)
    mf = parse_modelfile((out / "Modelfile").read_text())
    assert (out / mf["FROM"]).is_file()
    assert tok.eos_token in mf["stop"]
    if kind == "llama-lora":
        assert "<|im_end|>" in mf["stop"] and mf["SYSTEM"] is None
    else:
        assert mf["SYSTEM"] and "Qwen" in mf["SYSTEM"]  # the template's default system prompt
    convs = conversations()
    sent = [c if c[0]["role"] == "system" or mf["SYSTEM"] is None else [{"role": "system", "content": mf["SYSTEM"]}, *c]
            for c in convs]
    (tmp_path / "render.go").write_text(GO_RENDER)
    r = subprocess.run(["go", "run", str(tmp_path / "render.go")], input=json.dumps({"template": mf["TEMPLATE"], "convs": sent}),
                       capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "GOCACHE": str(tmp_path / "gocache"),
                                                                        "GOFLAGS": "-mod=mod", "GO111MODULE": "off"})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert len(got) == len(convs)
    for conv, text in zip(convs, got, strict=True):
        assert text == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_export_readme_and_manifest(exports):
    src, out = exports["llama-lora"]
    readme = (out / "README.md").read_text()
    assert "ollama create" in readme and "llama-server" in readme
    man = json.loads((out / "manifest.json").read_text())
    assert man["stage"] == "export" and man["pre_tokenizer"] == "gpt-2"
    assert sorted(man["metrics"]["files"]) == sorted(p.name for p in out.glob("*.gguf"))
    assert not list(out.glob("*-f32.gguf")) and not (out / "_hf").exists()  # intermediates are gone


# ----------------------------------------------------------------------------- bad input


def test_pre_tokenizer_is_recognised_or_refused(tokenizer_run, tmp_path):
    assert llama_cpp_pre_tokenizer(tokenizer_run) == "gpt-2"
    tj = json.loads((Path(tokenizer_run) / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(LlmkitError, match="pre-tokenizer .*Whitespace"):
        llama_cpp_pre_tokenizer(tmp_path)
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True, "trim_offsets": True}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(LlmkitError, match="add_prefix_space"):
        llama_cpp_pre_tokenizer(tmp_path)


def _unchanged(parent: Path) -> set:
    return {p.name for p in parent.iterdir()} if parent.exists() else set()


def test_export_refuses_bad_input(lora_runs, tmp_path, tokenizer_run):
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    run = lora_runs["sft"]
    with pytest.raises(LlmkitError, match="--quant 'q3_xyz': unknown quant type"):
        export(ExportArgs(run=str(run), quant=["q3_xyz"], output_dir=str(tmp_path / "a")))
    with pytest.raises(LlmkitError, match="--format 'onnx'"):
        export(ExportArgs(run=str(run), format="onnx", output_dir=str(tmp_path / "a")))
    partial = tmp_path / "unfinished"
    (tmp_path / "unfinished.partial").mkdir()
    with pytest.raises(LlmkitError, match="did not finish"):
        export(ExportArgs(run=str(partial), output_dir=str(tmp_path / "a")))
    # an architecture llama.cpp's converter has no class for, named
    tok = AutoTokenizer.from_pretrained(tokenizer_run)
    opt = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                             word_embed_proj_dim=32, max_position_embeddings=128)).save_pretrained(opt)
    tok.save_pretrained(opt)
    with pytest.raises(LlmkitError, match="cannot convert the architecture OPTForCausalLM"):
        export(ExportArgs(run=str(opt), output_dir=str(tmp_path / "a")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()


def test_export_refuses_too_little_disk(lora_runs, tmp_path, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(LlmkitError, match="not enough disk for the export"):
        export(ExportArgs(run=str(lora_runs["sft"]), output_dir=str(tmp_path / "a")))
    assert _unchanged(tmp_path) == set()


@pytest.mark.slow
def test_export_refuses_a_finished_export_without_overwrite(exports):
    src, out = exports["qwen2"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(LlmkitError, match="already holds a finished 'export' run.*--overwrite"):
        export(ExportArgs(run=str(src), output_dir=str(out)))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

