"""Progress bars for llmkit's own long steps (held-out metrics, greedy samples, merging).

One helper over tqdm, so every long loop looks the same on stderr::

    llmkit dpo: held-out preference metrics (before):  45%|████▌     | 360/800 [01:10<01:26, 5.1it/s]

Shown on the main process only (one bar, not one per rank), on stderr (stdout stays for
results).  ``TQDM_DISABLE=1`` turns every bar off, llmkit's and the libraries' alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def main_process() -> bool:
    """True on the process that writes the run (rank 0), without importing torch."""
    if "accelerate" in sys.modules:
        try:
            from accelerate.state import PartialState

            if PartialState._shared_state:  # created by the stage or the Trainer: trust it
                return PartialState().is_main_process
        except Exception:  # noqa: BLE001 - a progress bar never fails a run
            pass
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") in ("0", "")


def bar(total: int | None, desc: str | None, unit: str = "it", **kwargs: Any):
    """A tqdm bar with ETA on stderr, off on non-main processes and when ``desc`` is None
    (callers that have not said what the step is show nothing)."""
    from tqdm import tqdm

    off = desc is None or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes") or not main_process()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=1.0, disable=off, **kwargs)


def track(items: Iterable[T], desc: str | None, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate over ``items`` with a bar (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit) as b:
        for x in items:
            yield x
            b.update(1)


def announce(desc: str) -> None:
    """One line on stderr (main process) before a step whose bar a library draws itself, e.g.
    ``trainer.evaluate()``: says what the next bar is for."""
    if main_process() and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes"):
        print(f"{desc} ...", file=sys.stderr, flush=True)
