"""`llmkit export RUN --format gguf|merged`: a run directory out to the runtimes people run models with.

    llmkit export runs/tiny-es/sft --format gguf [--quant f16 q8_0 q4_k_m] [--output_dir DIR] [--overwrite]
    llmkit export runs/tiny-es/sft --format merged [--dtype bfloat16] [--output_dir DIR] [--overwrite]

GGUF (llama.cpp, Ollama, LM Studio): a LoRA run is first folded into its base (the one merge,
``modeling.merged_copy``, cached); llama.cpp's own converter (``convert_hf_to_gguf.py`` from the
pinned llama-cpp-python source distribution, installed by ``make setup`` into
``.venv/share/llmkit/``) writes an f32 GGUF, and llama.cpp's quantizer (``llama_model_quantize``
through llama-cpp-python) makes each ``--quant`` from it.  Next to the ``<name>-<quant>.gguf``
files: an Ollama ``Modelfile`` (the run's chat template in Ollama's Go-template language, its stop
tokens, its default system prompt) and a README (the model card plus the commands that run it).

The pre-tokenizer: llama.cpp names a BPE pre-tokenizer by a hash of the ids the tokenizer gives a
fixed text, so a tokenizer trained by llmkit (byte-level BPE, its own vocabulary) has a hash no
table knows.  ``llama_cpp_pre_tokenizer`` reads ``tokenizer.json`` and recognises the exact
configurations llama.cpp implements (GPT-2's byte-level regex — what llmkit trains —, Qwen2's
split); only for those is the converter told the name, and only when its own hash table has none.
Any other pre-tokenizer is refused, naming what was found.

Features:
  * --format gguf | merged; --quant one or more of QUANTS (default f16);
  * --output_dir (default exports/<name>-<format>); an export is staged and renamed like a run;
    a finished export is replaced only with --overwrite;
  * bad input, refused before any work: an unfinished run, an architecture llama.cpp cannot
    convert (named), an unknown quant type, too little free disk, a chat template that is not a
    plain per-role wrapper (no Modelfile can be written for it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError

LLAMA_CPP_VERSION = "0.3.36"  # pinned in pyproject.toml; the converter comes from the same source distribution
# --quant name -> llama.cpp's file type (llama_ftype); f32 is what the converter writes
QUANTS = {"f32": "LLAMA_FTYPE_ALL_F32", "f16": "LLAMA_FTYPE_MOSTLY_F16", "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
          "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
          "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
BITS = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q4_k_m": 4.9, "q4_0": 4.5}
FORMATS = ("gguf", "merged")

# Qwen2's split regex as its tokenizer.json writes it (llama.cpp's "qwen2" pre-tokenizer implements it)
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


# ============================================================================ the converter in the venv


def converter_dir() -> Path:
    """Where `make setup` puts llama.cpp's convert_hf_to_gguf.py and its conversion/ package."""
    return Path(os.environ.get("LLMKIT_GGUF_CONVERTER") or Path(sys.prefix) / "share" / "llmkit" / f"llama.cpp-{LLAMA_CPP_VERSION}")


def install_converter(sdist: str | Path, dest: str | Path | None = None) -> Path:
    """Extract convert_hf_to_gguf.py, conversion/ and the licence from llama-cpp-python's source
    distribution SDIST into DEST (default: converter_dir()), staged and renamed."""
    dest = Path(dest or converter_dir())
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "LICENSE", "conversion/", "gguf-py/gguf/", "gguf-py/LICENSE")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted)]
        if not any(m.name.endswith("convert_hf_to_gguf.py") for m in members):
            raise LlmkitError(f"{sdist} holds no {prefix}convert_hf_to_gguf.py: not llama-cpp-python {LLAMA_CPP_VERSION}'s sdist")
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def check_tools() -> Path:
    """The converter script; every missing piece is one line that names `make setup`."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise LlmkitError("GGUF export needs the llama-cpp-python package: run `make setup`")
    if not script.is_file():
        raise LlmkitError(f"llama.cpp's converter is not installed ({script} is missing): run `make setup`")
    return script


# ============================================================================ the pre-tokenizer


def _bytelevel(pre: dict, use_regex: bool) -> bool:
    return (pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", False)
            and bool(pre.get("use_regex", True)) == use_regex)


def _qwen2_split(pre: dict) -> bool:
    return (pre.get("type") == "Split" and (pre.get("pattern") or {}).get("Regex") == QWEN2_SPLIT
            and pre.get("behavior") == "Isolated" and not pre.get("invert", False))


def llama_cpp_pre_tokenizer(model_dir: str | Path) -> str:
    """The name of llama.cpp's pre-tokenizer that does exactly what MODEL_DIR's tokenizer.json
    does ("gpt-2" for llmkit's byte-level BPE, "qwen2" for Qwen2's split), else a LlmkitError.

    llama.cpp does not normalize text: an NFC normalizer (what llmkit trains) is accepted, and
    text that is already NFC (what keyboards type) tokenizes the same."""
    f = Path(model_dir) / "tokenizer.json"
    if not f.is_file():
        raise LlmkitError(f"{model_dir} has no tokenizer.json: GGUF export needs a fast (tokenizers) BPE tokenizer")
    tok = json.loads(f.read_text(encoding="utf-8"))
    kind = (tok.get("model") or {}).get("type")
    if kind != "BPE":
        raise LlmkitError(f"{f}: a {kind} tokenizer; llama.cpp reads tokenizer.json only for BPE (a unigram tokenizer "
                          "needs a sentencepiece tokenizer.model): train the tokenizer with model_type: bpe")
    norm = tok.get("normalizer")
    if norm is not None and norm.get("type") != "NFC":
        raise LlmkitError(f"{f}: normalizer {norm.get('type')!r}; llama.cpp applies none (NFC alone is accepted)")
    pre = tok.get("pre_tokenizer") or {}
    if _bytelevel(pre, use_regex=True):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(parts) == 2 and _qwen2_split(parts[0]) and _bytelevel(parts[1], use_regex=False):
        return "qwen2"
    raise LlmkitError(f"{f}: pre-tokenizer {json.dumps(pre)[:200]} is not one llmkit knows llama.cpp implements "
                      "(byte-level GPT-2, Qwen2 split); convert it with llama.cpp's convert_hf_to_gguf_update.py")


# ============================================================================ chat template -> Ollama


@dataclass
class RoleWrap:
    """A chat template that renders every message as PREFIX[role] + content + SUFFIX[role]."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str  # what add_generation_prompt appends
    default_system: str | None = None  # the system message the template adds when there is none
    stops: list[str] = field(default_factory=list)


_PROBE = ("⟦llmkit-a⟧", "⟦llmkit-b⟧", "⟦llmkit-c⟧", "⟦llmkit-d⟧")


def _render(tok, messages: list[dict], gen: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _cut(text: str, head: str, where: str) -> str:
    if not text.startswith(head):
        raise ValueError(where)
    return text[len(head):]


def _split_on(text: str, marker: str, where: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise ValueError(where)
    a, b = text.split(marker)
    return a, b


def role_wrap(tok) -> RoleWrap:
    """Read the per-role wrappers off TOK's chat template by rendering probe conversations, then
    check them on multi-turn conversations with and without a system prompt.  A template that is
    not such a wrapper (tools, loops over earlier turns, ...) raises ValueError."""
    a, b, c, d = _PROBE
    sp, ss = _split_on(_render(tok, [{"role": "system", "content": a}], False), a, "system")
    s_only = sp + a + ss
    up, us = _split_on(_cut(_render(tok, [{"role": "system", "content": a}, {"role": "user", "content": b}], False), s_only, "user"),
                       b, "user")
    conv = [{"role": "system", "content": a}, {"role": "user", "content": b}]
    gen = _cut(_render(tok, conv, True), _render(tok, conv, False), "generation prompt")
    ap, as_ = _split_on(_cut(_render(tok, [*conv, {"role": "assistant", "content": c}], False), s_only + up + b + us, "assistant"),
                        c, "assistant")
    wrap = RoleWrap({"system": sp, "user": up, "assistant": ap}, {"system": ss, "user": us, "assistant": as_}, gen)
    alone = _render(tok, [{"role": "user", "content": d}], False)
    if alone != up + d + us:
        head = _cut(alone, sp, "default system")
        default, rest = head.split(ss, 1) if ss in head else (None, None)
        if default is None or rest != up + d + us:
            raise ValueError("a user turn alone")
        wrap.default_system = default
    for conv in _probe_conversations():
        if _render(tok, conv, True) != render_wrapped(wrap, conv, True):
            raise ValueError("a multi-turn conversation")
    return wrap


def _probe_conversations() -> list[list[dict]]:
    turns = [{"role": "user", "content": "¿Cuánto es 2 más 3?"}, {"role": "assistant", "content": "Veamos: 2 + 3 = 5."},
             {"role": "user", "content": "¿Y 4 por 5?\nResponde con un número."}]
    return [turns, [{"role": "system", "content": "Eres un asistente que responde en español."}, *turns], turns[:1]]


def render_wrapped(wrap: RoleWrap, messages: list[dict], gen: bool) -> str:
    """What the template renders, from the wrappers (the default system prompt added when absent)."""
    if wrap.default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": wrap.default_system}, *messages]
    text = "".join(wrap.prefix[m["role"]] + m["content"] + wrap.suffix[m["role"]] for m in messages)
    return text + (wrap.generation if gen and messages and messages[-1]["role"] != "assistant" else "")


def _go_text(s: str, what: str) -> str:
    if "{{" in s or "}}" in s or '"""' in s:
        raise LlmkitError(f"the chat template's {what} text {s!r} holds '{{{{', '}}}}' or '\"\"\"': write the Modelfile by hand")
    return s


def ollama_template(wrap: RoleWrap) -> str:
    """The wrappers in Ollama's template language (Go text/template over .Messages).  No trim
    markers ({{-): the literal text, newlines included, is the template's own."""
    t = ['{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}']
    for n, role in enumerate(("system", "user", "assistant")):
        t.append(f'{{{{ {"if" if n == 0 else "else if"} eq .Role "{role}" }}}}{_go_text(wrap.prefix[role], role)}{{{{ .Content }}}}'
                 f'{_go_text(wrap.suffix[role], role)}')
    t.append('{{ end }}{{ if and $last (ne .Role "assistant") }}' + _go_text(wrap.generation, "generation prompt") + "{{ end }}{{ end }}")
    return "".join(t)


def stop_strings(tok, wrap: RoleWrap) -> list[str]:
    """The special tokens that end an assistant turn: the one in its suffix, and EOS."""
    specials = set(tok.all_special_tokens) | {str(t) for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special}
    out = [t for t in specials if t in wrap.suffix["assistant"]]
    if tok.eos_token and tok.eos_token not in out:
        out.append(tok.eos_token)
    return out


def modelfile(gguf_name: str, wrap: RoleWrap) -> str:
    lines = ["# Ollama: ollama create NAME -f Modelfile  (written by llmkit export)", f"FROM ./{gguf_name}",
             f'TEMPLATE """{ollama_template(wrap)}"""']
    if wrap.default_system is not None:
        lines.append(f'SYSTEM """{_go_text(wrap.default_system, "default system")}"""')
    lines += [f'PARAMETER stop "{s}"' for s in wrap.stops]
    return "\n".join(lines) + "\n"


_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def runtime_template(template: str) -> str:
    """The chat template without transformers' {% generation %} markers (a training-time tag for
    assistant-only loss that llama.cpp's and Ollama's template engines do not know)."""
    return _GENERATION_TAGS.sub("", template)


# ============================================================================ export


@dataclass
class ExportArgs:
    run: str
    format: str = "gguf"
    quant: list[str] = field(default_factory=lambda: ["f16"])
    output_dir: str | None = None
    dtype: str = "bfloat16"
    overwrite: bool = False


def default_output(run: str, fmt: str) -> Path:
    p = Path(run).resolve()
    return Path("exports") / f"{p.parent.name}-{p.name}-{fmt}"


def _model_arch(model_dir: Path) -> str:
    cfg = json.loads((model_dir / "config.json").read_text())
    return (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]


def local_model_dir(model: str) -> Path:
    """MODEL's files on this machine: a local directory, or a hub id's snapshot in the HF cache
    (config, tokenizer and safetensors: what the merge loads anyway; from the cache when offline)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    from llmkit import hub

    try:
        return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"],
                                      local_files_only=hub.offline()))
    except Exception as exc:  # noqa: BLE001 - one line naming the repo and the fix
        raise hub.explain(exc, model, "model", what="base model") from None


def _source_dir(run: str) -> Path:
    """The full model to convert: the run itself, or (a LoRA run) the cached merge."""
    from llmkit.modeling import is_adapter_dir, merged_copy

    if is_adapter_dir(run):
        return Path(merged_copy(run))
    return Path(run)


def _size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) or sum(f.stat().st_size for f in path.glob("*.bin"))


def check_disk(out: Path, need: int) -> None:
    parent = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(parent).free
    if free < need:
        raise LlmkitError(f"not enough disk for the export in {parent}: {free / 2**30:.2f} GiB free, about {need / 2**30:.2f} GiB "
                          "needed; free space or choose another --output_dir")


def _check_args(a: ExportArgs) -> None:
    if a.format not in FORMATS:
        raise LlmkitError(f"--format {a.format!r}: choose one of {', '.join(FORMATS)}")
    bad = [q for q in a.quant if q.lower() not in QUANTS]
    if bad:
        raise LlmkitError(f"--quant {bad[0]!r}: unknown quant type; choose from {', '.join(QUANTS)}")
    a.quant = list(dict.fromkeys(q.lower() for q in a.quant))
    if a.format == "merged" and a.dtype not in ("bfloat16", "float16", "float32"):
        raise LlmkitError(f"--dtype {a.dtype!r}: choose bfloat16, float16 or float32")


def _convert_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def check_architecture(arch: str) -> None:
    """Refuse, before any work, an architecture llama.cpp's converter has no class for."""
    r = subprocess.run([sys.executable, "-m", "llmkit.export", "_convert", "--check-arch", arch], capture_output=True,
                       text=True, env=_convert_env())
    if r.returncode == 3:
        raise LlmkitError(f"llama.cpp {LLAMA_CPP_VERSION} cannot convert the architecture {arch} to GGUF (its converter has no "
                          "class for it); export --format merged and use transformers or vLLM")
    if r.returncode != 0:
        raise LlmkitError(f"llama.cpp's converter failed to start: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def _link_source(src: Path, dest: Path, tok) -> None:
    """DEST: SRC's files as symlinks, with the tokenizer's chat template rewritten for runtimes."""
    dest.mkdir(parents=True)
    skip = {"tokenizer_config.json", "chat_template.jinja", "chat_template.json"}
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            (dest / f.name).symlink_to(f.resolve())
    cfg_file = src / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    cfg.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    if tok.chat_template:
        (dest / "chat_template.jinja").write_text(runtime_template(tok.chat_template), encoding="utf-8")


def _run_converter(script: Path, src: Path, outfile: Path, pre: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "llmkit.export", "_convert", "--script", str(script), "--pre", pre, "--",
           str(src), "--outfile", str(outfile), "--outtype", "f32"]
    from rich.console import Console

    with open(log, "w") as fh, Console(stderr=True).status(f"llmkit export: llama.cpp's converter on {src} (log: {log})"):
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_convert_env())
    if r.returncode != 0 or not outfile.is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-12:])
        raise LlmkitError(f"llama.cpp's converter failed (status {r.returncode}); last lines of {log}:\n{tail}")


def quantize(src: Path, dest: Path, quant: str) -> None:
    """llama.cpp's quantizer (llama_model_quantize) from the f32 GGUF SRC to DEST."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = int(os.environ.get("OMP_NUM_THREADS") or 0) or (os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), llama_cpp.byref(params))
    if rc != 0 or not dest.is_file():
        raise LlmkitError(f"llama.cpp's quantizer failed on {src} -> {quant} (status {rc})")


def export(a: ExportArgs) -> Path:
    """`llmkit export`: check everything, stage the export, rename it into place."""
    from llmkit import runs
    from llmkit.config import StageConfig
    from llmkit.modeling import adapter_base, is_adapter_dir, load_tokenizer

    started = time.time()
    _check_args(a)
    manifest = runs.require_run(a.run, "run to export")
    if not Path(a.run).is_dir():
        raise LlmkitError(f"run to export not found: {a.run}")
    if manifest is None and (Path(a.run) / "manifest.json").exists():
        raise LlmkitError(f"{a.run} is not a finished run; run its stage again")
    out = Path(a.output_dir or default_output(a.run, a.format))
    lora = is_adapter_dir(a.run)
    tok = load_tokenizer(a.run)
    runs.check_output_dir(out, a.overwrite)
    if a.format == "merged":
        return export_merged(a, out, lora)
    script = check_tools()
    base_dir = Path(a.run) if not lora else local_model_dir(adapter_base(a.run))
    arch = _model_arch(base_dir)
    pre = llama_cpp_pre_tokenizer(a.run if (Path(a.run) / "tokenizer.json").is_file() else base_dir)
    if not tok.chat_template:
        raise LlmkitError(f"{a.run} has no chat template: nothing to write the Modelfile from")
    try:
        wrap = role_wrap(tok)
    except ValueError as exc:
        raise LlmkitError(f"{a.run}: its chat template is not a plain per-role wrapper ({exc} renders otherwise); "
                          "llmkit cannot write the Modelfile TEMPLATE for it") from None
    wrap.stops = stop_strings(tok, wrap)
    from llmkit.modeling import count_parameters

    params = count_parameters(base_dir) or _size_of(base_dir) // 2
    need = int(params * (4 + sum(BITS[q] / 8 for q in a.quant if q != "f32")) * 1.05) + (params * 4 if lora else 0)
    check_disk(out, need)
    check_architecture(arch)

    name = out.name.removesuffix("-gguf") or "model"
    cfg = StageConfig(args=[a], explicit={"run": a.run, "format": a.format, "quant": a.quant}, source="llmkit export")
    staging = runs.open_staging(out, cfg, "export", a.overwrite)
    src = _source_dir(a.run)
    link = staging / "_hf"
    shutil.rmtree(link, ignore_errors=True)
    _link_source(src, link, tok)
    f32 = staging / f"{name}-f32.gguf"
    _run_converter(script, link, f32, pre, staging / "convert.log")
    files = []
    for q in a.quant:
        dest = staging / f"{name}-{q}.gguf"
        if q != "f32":
            print(f"llmkit export: quantizing to {q}", file=sys.stderr, flush=True)
            quantize(f32, dest, q)
        files.append(dest.name)
    if "f32" not in a.quant:
        f32.unlink()
    shutil.rmtree(link)
    (staging / "Modelfile").write_text(modelfile(files[0], wrap), encoding="utf-8")
    _write_card(a.run, staging, usage=gguf_usage(name, files, wrap), gguf=True)
    from llmkit.lineage import describe

    result = runs.finalize(staging, out, runs.build_manifest(
        "export", cfg, started, {"run": a.run}, {"files": files},
        extra={"format": "gguf", "pre_tokenizer": pre, "architecture": arch, "llama_cpp_python": LLAMA_CPP_VERSION,
               "source": describe(a.run), "summary": f"GGUF ({', '.join(a.quant)}) of {a.run}"}))
    print(f"llmkit export: {describe(a.run)} -> {result}/ ({', '.join(files)}, Modelfile, README.md)")
    return result


def export_merged(a: ExportArgs, out: Path, lora: bool) -> Path:
    """--format merged: a standalone model (the LoRA run folded into its base by `llmkit merge`)."""
    from llmkit.modeling import merge_adapter_run

    if not lora:
        raise LlmkitError(f"{a.run} is already a full model (no adapter_config.json): nothing to merge; copy or push it as it is")
    from llmkit.modeling import adapter_base, count_parameters

    params = count_parameters(local_model_dir(adapter_base(a.run)))
    check_disk(out, int(params * (4 if a.dtype == "float32" else 2) * 1.05))
    result = merge_adapter_run(a.run, str(out), dtype=a.dtype, overwrite=a.overwrite)
    _write_card(a.run, result, usage=None, gguf=False)
    return result


def _write_card(run: str, dest: Path, usage: str | None, gguf: bool) -> None:
    from llmkit.modelcard import write_model_card

    write_model_card(run, dest, usage=usage, extra_tags=["gguf", "llama.cpp", "ollama"] if gguf else ["merged"],
                     library="gguf" if gguf else "transformers")


def gguf_usage(name: str, files: list[str], wrap: RoleWrap) -> str:
    first = files[0]
    lines = ["## Run it", "", "Ollama (the Modelfile holds the chat template, the stop tokens"
             + (" and the default system prompt" if wrap.default_system is not None else "") + "):", "", "```sh",
             f"ollama create {name} -f Modelfile", f"ollama run {name}", "```", "", "llama.cpp:", "", "```sh",
             f"llama-server -m {first} --jinja --port 8080      # OpenAI-compatible API on http://127.0.0.1:8080/v1",
             f"llama-cli -m {first} --jinja -cnv", "```", "", "llmkit (llama-cpp-python's OpenAI server on this folder's first GGUF):",
             "", "```sh", "llmkit serve . --engine llama.cpp", "```", "",
             f"LM Studio: put {first} in a `<publisher>/<model>/` folder under LM Studio's models directory; "
             "it reads the chat template from the GGUF.", "", "Files: " + ", ".join(f"`{f}`" for f in files) + "."]
    return "\n".join(lines)


# ============================================================================ CLI


def export_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llmkit export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run directory (a LoRA run is merged into its base first)")
    p.add_argument("--format", default="gguf", help="gguf (llama.cpp, Ollama, LM Studio) or merged (a standalone HF model)")
    p.add_argument("--quant", nargs="+", default=["f16"], help=f"GGUF types to write, one file each: {', '.join(QUANTS)}")
    p.add_argument("--output_dir", "--output-dir", help="where the export goes (default: exports/<recipe>-<run>-<format>)")
    p.add_argument("--dtype", default="bfloat16", help="--format merged: bfloat16, float16 or float32")
    p.add_argument("--overwrite", action="store_true", help="replace a finished export in --output_dir")
    ns = p.parse_args(argv)
    export(ExportArgs(run=ns.run, format=ns.format, quant=ns.quant, output_dir=ns.output_dir, dtype=ns.dtype, overwrite=ns.overwrite))
    return 0


# ============================================================================ push

PUSH_SKIP = ("checkpoints/", "llmkit_partial.json", "training_args.bin", ".lock")


def _push_files(run: Path) -> list[Path]:
    out = []
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(run).as_posix()
        if f.is_file() and not rel.startswith(PUSH_SKIP[0]) and not rel.endswith(PUSH_SKIP[1:]) and "/." not in f"/{rel}":
            out.append(f)
    return out


def push(run: str, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """`llmkit push`: RUN (a finished run or export) as one commit to the hub repo REPO_ID, created
    if needed; a run's README.md is its model card, written fresh (with its latest eval results)."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    from llmkit import hub, runs

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise LlmkitError(f"--repo_id {repo_id!r}: expected ORG/NAME (your user name or an organization, then the model's name)")
    manifest = runs.require_run(run, "run to push")
    if manifest is None:
        raise LlmkitError(f"{run} is not a finished llmkit run or export (no manifest.json); push finished runs only")
    if hub.offline():
        raise LlmkitError("push needs the hub: HF_HUB_OFFLINE is set; unset it (and HF_DATASETS_OFFLINE) to upload")
    token = token or get_token()
    if not token:
        raise LlmkitError(f"push needs a Hugging Face token with write access: {hub.LOGIN}")
    root = Path(run)
    ops = [CommitOperationAdd(f.relative_to(root).as_posix(), str(f)) for f in _push_files(root)]
    if manifest.get("stage") != "export":
        from llmkit.modelcard import build_model_card

        ops = [op for op in ops if op.path_in_repo != "README.md"]
        ops.append(CommitOperationAdd("README.md", str(build_model_card(run)).encode()))
    api = HfApi(endpoint=hub.endpoint(), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id, ops, commit_message=f"llmkit push: the {manifest.get('stage')} run {root.resolve().name}",
                                 repo_type="model")
    except Exception as exc:  # noqa: BLE001 - every hub error is one line
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise LlmkitError(f"the hub ({hub.endpoint()}) refused the token for {repo_id} ({status}): use a token with write "
                              f"access to {repo_id.split('/')[0]}; {hub.LOGIN}") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise LlmkitError(f"push to {repo_id} on {hub.endpoint()} failed: {type(exc).__name__}: {first}") from None
    print(f"llmkit push: {run} -> {info.commit_url} ({len(ops)} files{', private' if private else ''})")
    return info.commit_url


def push_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llmkit push", description="Upload a finished run or export to the Hugging Face Hub "
                                "(one commit; the repo is created if needed; the README is the model card).")
    p.add_argument("run", help="a finished run directory or an `llmkit export` directory")
    p.add_argument("--repo_id", "--repo-id", required=True, help="ORG/NAME on the hub")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    ns = p.parse_args(argv)
    push(ns.run, ns.repo_id, ns.private)
    return 0


def _convert_main(argv: list[str]) -> int:
    """The converter, run in its own process: `--check-arch ARCH` exits 3 when llama.cpp has no
    class for ARCH; otherwise convert_hf_to_gguf.py runs with its arguments after `--`, told the
    pre-tokenizer name PRE only when its own hash table does not know the tokenizer."""
    p = argparse.ArgumentParser(prog="llmkit.export _convert")
    p.add_argument("--script", default=str(converter_dir() / "convert_hf_to_gguf.py"))
    p.add_argument("--pre")
    p.add_argument("--check-arch")
    ns, rest = p.parse_known_args(argv)
    here = Path(ns.script).parent
    sys.path[:0] = [str(here), str(here / "gguf-py")]  # its own gguf-py: the gguf on PyPI (0.19.0) is older than the converter
    import conversion
    import conversion.base as base

    if ns.check_arch:
        try:
            conversion.get_model_class(ns.check_arch)
        except NotImplementedError:
            return 3
        return 0
    known = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            if not ns.pre:
                raise
            base.logger.info(f"llmkit: tokenizer.json's pre-tokenizer is llama.cpp's {ns.pre!r} (its hash is new: a trained vocabulary)")
            return ns.pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    import runpy

    sys.argv = [ns.script, *(rest[1:] if rest[:1] == ["--"] else rest)]
    runpy.run_path(ns.script, run_name="__main__")
    return 0


def _main(argv: list[str]) -> int:
    if argv[:1] == ["_convert"]:
        return _convert_main(argv[1:])
    if argv[:1] == ["install-converter"] and len(argv) == 2:
        print(f"llama.cpp's converter -> {install_converter(argv[1])}")
        return 0
    raise SystemExit("usage: python -m llmkit.export _convert ... | install-converter SDIST")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


__all__: list[Any] = ["export", "export_command", "llama_cpp_pre_tokenizer", "role_wrap", "ollama_template", "install_converter"]
