"""`python -m llmkit.ui.child JOB.json`: run the job's llmkit commands one after the other (as
a user would type them; the first failure stops the rest) and record the exit status in the
job file.  Started by the page in its own process group; SIGTERM to the group reaches the
llmkit command (which saves a checkpoint and exits 143) while this process waits to record it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def main(job_path: str) -> int:
    # first: a Python handler, not SIG_IGN, so the command starts with the default (and sets its own)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    from llmkit import runs
    from llmkit.ui.jobs import read_job, write_job

    f = Path(job_path)
    job = read_job(f) or {}
    # from here on a stop reaches the command and the status is recorded; the pid too, in case this
    # write lands after the page's (this process leads its group: its pid is the one the page started)
    write_job(f, {**job, "armed": True, "pid": os.getpid()})
    rc = 0
    for argv in job.get("commands", []):
        print(f"$ llmkit {subprocess.list2cmdline(argv)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", "llmkit", *argv])
        if rc != 0:
            break
    current = read_job(f) or job
    write_job(f, {**current, "rc": rc, "finished_at": runs.now()})
    print(f"[llmkit ui] exit status {rc}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
