"""Local trackers from a recipe: `report_to: [tensorboard, trackio]` writes both inside the run
directory (nothing in ~ or the HF cache), offline, with the losses llmkit logged. The default
stays `none`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from conftest import TINY_MODEL


def test_tensorboard_and_trackio_write_the_losses_inside_the_run(tmp_path, tokenizer_run, corpus):
    out = tmp_path / "runs" / "pre"
    env = {**os.environ, "HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "LLMKIT_CACHE_DIR": str(tmp_path / "cache"), "MPLCONFIGDIR": str(tmp_path / "cache" / "matplotlib")}
    env.pop("TRACKIO_DIR", None)
    env.pop("TENSORBOARD_LOGGING_DIR", None)
    r = subprocess.run([sys.executable, "-m", "llmkit", "pretrain", "--output_dir", str(out),
                        "--tokenizer_name_or_path", str(tokenizer_run),
                        "--model_config", json.dumps(TINY_MODEL), "--datasets", f"[{corpus}]", "--block_size", "64",
                        "--eval_split_size", "0", "--max_steps", "6", "--logging_steps", "2", "--per_device_train_batch_size", "4",
                        "--report_to", "[tensorboard, trackio]"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    logged = [row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in row]
    assert len(logged) == 3
    # TensorBoard: event files in <run>/tensorboard holding the same losses
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [round(e.value, 5) for e in acc.Scalars("train/loss")] == [round(x, 5) for x in logged]
    # trackio: its database in <run>/trackio, project "llmkit", run named after the run directory
    db = out / "trackio" / "llmkit.db"
    with sqlite3.connect(db) as c:
        rows = [json.loads(m) for (m,) in c.execute("select metrics from metrics order by step")]
        names = {n for (n,) in c.execute("select run_name from metrics")}
    assert [round(m["train/loss"], 5) for m in rows if "train/loss" in m] == [round(x, 5) for x in logged]
    assert names == {"pre"}
    # nothing outside the run and the caches llmkit was given
    assert not any((tmp_path / "home").rglob("*")) and not (tmp_path / "hf").exists()


def test_default_is_no_tracker():
    from llmkit.stages.devices import trainer_defaults

    assert trainer_defaults({})["report_to"] == "none"
