"""llmkit benchmarks on this machine, each reported against a baseline measured in the same run.

    python bench/run.py [--only eval,serve] [--out bench/results]      (make bench)

eval   examples/s of the whole Spanish suite (offline fixtures) on a tiny Llama:
       vLLM in-process vs transformers (lm-eval's hf model).
serve  requests/s and generated tokens/s of the served tiny model under concurrent load
       (CONCURRENCY clients, REQUESTS requests of MAX_TOKENS tokens): vLLM's OpenAI server vs
       the `transformers serve` fallback.

The model is built here (tokenizer trained on data/corpus_train.jsonl, random ~1M-parameter Llama
of the tiny-es shape), so the numbers do not depend on earlier runs. Results: a JSON file and a
Markdown table under --out; BENCHMARKS.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONCURRENCY, REQUESTS, MAX_TOKENS = 16, 64, 64


def build_model(work: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.cli import main as llmkit
    from llmkit.modeling import new_model_config

    tok_dir, model_dir = work / "tokenizer", work / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    if not tok_dir.exists():
        assert llmkit(["tokenizer", "--output_dir", str(tok_dir), "--datasets", f"[{REPO / 'data/corpus_train.jsonl'}]",
                       "--vocab_size", "2000"]) == 0
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = new_model_config({"model_type": "llama", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
                            "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 1024}, tok)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def bench_eval(model: Path, work: Path) -> dict:
    from llmkit.evaluation.runner import EvalArgs, evaluate

    out = {}
    for engine in ("transformers", "vllm"):
        t0 = time.perf_counter()
        d = evaluate(EvalArgs(target=str(model), tasks="es", engine=engine, data_dir=str(REPO / "tests/fixtures/eval"),
                              output_dir=str(work / f"eval-{engine}"), overwrite=True, bootstrap_iters=100,
                              max_model_len=1024))
        total = time.perf_counter() - t0
        res = json.loads((d / "results.json").read_text())
        n = sum(t["n"] for t in res["tasks"].values())
        out[engine] = {"examples": n, "harness_s": res["wall_time_s"], "total_s": round(total, 2),
                       "examples_per_s": round(n / res["wall_time_s"], 2),
                       "primary": {k: round(v["metrics"][v["primary"]]["value"], 4) for k, v in res["tasks"].items()}}
    out["vllm_vs_transformers"] = round(out["vllm"]["examples_per_s"] / out["transformers"]["examples_per_s"], 2)
    return out


def _load(url: str, model: str, api_key: str | None) -> dict:
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    prompts = [f"Pregunta {i}: ¿qué tiempo hace hoy en la ciudad número {i}?" for i in range(REQUESTS)]

    def one(p):
        t = time.perf_counter()
        r = requests.post(f"{url}/v1/completions", headers=headers, timeout=600,
                          json={"model": model, "prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0})
        r.raise_for_status()
        return time.perf_counter() - t, r.json()["usage"]["completion_tokens"]

    one(prompts[0])  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        done = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    lat = sorted(d for d, _ in done)
    toks = sum(n for _, n in done)
    return {"requests": len(done), "wall_s": round(wall, 2), "requests_per_s": round(len(done) / wall, 2),
            "tokens_per_s": round(toks / wall, 1), "completion_tokens": toks,
            "latency_p50_s": round(lat[len(lat) // 2], 3), "latency_p95_s": round(lat[int(len(lat) * 0.95) - 1], 3)}


def bench_serve(model: Path) -> dict:
    from llmkit.serving import build_server

    out = {}
    for engine in ("vllm", "transformers"):
        srv, plan, used = build_server(str(model), engine=engine, max_model_len=1024 if engine == "vllm" else None)
        t0 = time.perf_counter()
        with srv:
            startup = time.perf_counter() - t0
            out[engine] = {"startup_s": round(startup, 1), **_load(srv.url, plan.name, None)}
    out["vllm_vs_transformers_tokens_per_s"] = round(out["vllm"]["tokens_per_s"] / out["transformers"]["tokens_per_s"], 2)
    return out


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def markdown(res: dict) -> str:
    lines = [f"machine: {res['machine']['cpu_count']} CPU cores, {res['machine']['platform']}, torch {res['machine']['torch']}", ""]
    if "eval" in res:
        e = res["eval"]
        lines += ["| eval (whole suite, fixtures) | examples | harness s | examples/s |", "|---|---|---|---|"]
        for k in ("transformers", "vllm"):
            lines.append(f"| {k} | {e[k]['examples']} | {e[k]['harness_s']} | {e[k]['examples_per_s']} |")
        lines += [f"| **vLLM / transformers** | | | **{e['vllm_vs_transformers']}x** |", ""]
    if "serve" in res:
        s = res["serve"]
        lines += [f"| serve ({REQUESTS} requests x {MAX_TOKENS} tokens, {CONCURRENCY} concurrent) | start-up s | req/s | tokens/s | p50 s | p95 s |",
                  "|---|---|---|---|---|---|"]
        for k in ("transformers", "vllm"):
            v = s[k]
            lines.append(f"| {k} | {v['startup_s']} | {v['requests_per_s']} | {v['tokens_per_s']} | {v['latency_p50_s']} | {v['latency_p95_s']} |")
        lines += [f"| **vLLM / transformers** | | | **{s['vllm_vs_transformers_tokens_per_s']}x** | | |", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="eval,serve")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    os.environ.setdefault("LLMKIT_CACHE_DIR", str(REPO / ".cache" / "llmkit"))
    work = REPO / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work)
    res: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    parts = a.only.split(",")
    if "eval" in parts:
        res["eval"] = bench_eval(model, work)
    if "serve" in parts:
        res["serve"] = bench_serve(model)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if res["machine"]["cuda"] else "cpu"
    (out / f"{tag}.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (out / f"{tag}.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
