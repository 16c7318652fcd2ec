"""The noise of a stage's held-out numbers, computed where the numbers are made.

Every share a stage reports (exact answers, pairwise accuracy, answer accuracy) is a count out of
n held-out items, so it has a binomial noise: ``wilson`` gives its 95 % Wilson score interval.
When a stage measures the same items before and after training, the honest test of its gain is
paired: ``paired`` counts the items training fixed and the ones it broke, and gives McNemar's
exact two-sided p-value (a binomial test of fixed against fixed + broken at 1/2); for a score
(PPO's reward-model reward), ``paired_scores`` counts the prompts scored higher and lower and
gives the sign test's p-value, the same binomial test.  The stages
record both in their metrics; the summary rows and the report card show them next to the number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def wilson(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (for z = 1.96) Wilson score interval of a share observed on n items."""
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value of ``fixed`` against ``broken`` discordant items."""
    m = fixed + broken
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(fixed, broken) + 1)) / 2**m
    return min(1.0, 2 * tail)


def paired(before: Iterable[bool], after: Iterable[bool]) -> dict[str, float | int]:
    """Items right after but not before (fixed), the reverse (broken), and McNemar's p."""
    b, a = [bool(x) for x in before], [bool(x) for x in after]
    if len(b) != len(a):
        raise ValueError(f"paired: {len(b)} items before, {len(a)} after")
    fixed = sum(x and not y for x, y in zip(a, b))
    broken = sum(y and not x for x, y in zip(a, b))
    return {"paired_fixed": fixed, "paired_broken": broken, "paired_p": mcnemar_exact(fixed, broken)}


def paired_scores(before: Iterable[float], after: Iterable[float]) -> dict[str, float | int]:
    """Prompts scored higher after training than before, lower, and the sign test's p (ties left out)."""
    b, a = [float(x) for x in before], [float(x) for x in after]
    if len(b) != len(a):
        raise ValueError(f"paired_scores: {len(b)} scores before, {len(a)} after")
    higher = sum(y > x for x, y in zip(b, a))
    lower = sum(y < x for x, y in zip(b, a))
    return {"paired_higher": higher, "paired_lower": lower, "paired_p": mcnemar_exact(higher, lower)}


def p_text(p: float) -> str:
    """A p-value as people write it: two significant digits, or "< 0.0001"."""
    return "< 0.0001" if p < 1e-4 else f"= {p:.2g}"
