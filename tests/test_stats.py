"""The noise the stages record (llmkit/stats.py), against scipy's independent implementations:
Wilson intervals against ``binomtest(...).proportion_ci(method="wilson")``, McNemar's exact test
against a two-sided binomial test of the discordant items; and the summary rows / report card
showing them from a run's own metrics."""

from __future__ import annotations

import pytest

from llmkit import stats

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("k,n", [(0, 200), (23, 200), (85, 200), (200, 200), (3, 7), (1, 1)])
def test_wilson_equals_scipy(k, n):
    ref = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = stats.wilson(k / n, n)
    assert lo == pytest.approx(ref.low, abs=2e-4) and hi == pytest.approx(ref.high, abs=2e-4)


@pytest.mark.parametrize("fixed,broken", [(14, 7), (22, 10), (0, 0), (5, 0), (30, 30), (40, 12)])
def test_mcnemar_equals_a_binomial_test_of_the_discordant_items(fixed, broken):
    expected = 1.0 if fixed + broken == 0 else scipy_stats.binomtest(fixed, fixed + broken, 0.5).pvalue
    assert stats.mcnemar_exact(fixed, broken) == pytest.approx(expected, rel=1e-9)


def test_paired_counts_fixed_and_broken_items():
    before = [True, False, False, True, False, True]
    after = [True, True, True, False, False, True]
    got = stats.paired(before, after)
    assert (got["paired_fixed"], got["paired_broken"]) == (2, 1)
    assert got["paired_p"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 items before, 2 after"):
        stats.paired([True] * 3, [True] * 2)


def test_summary_rows_and_the_report_show_the_noise():
    from llmkit.report import _change
    from llmkit.stages import summary

    metrics = {"eval_math_accuracy_reward_before": 0.425, "eval_math_accuracy_reward": 0.46, "eval_format_reward_before": 1.0,
               "eval_format_reward": 1.0, "eval_prompts": 200, **stats.paired([True] * 7 + [False] * 14, [False] * 7 + [True] * 14)}
    rows = summary("grpo", metrics)
    acc = rows[0]
    assert acc["n"] == 200 and acc["paired"] == {"fixed": 14, "broken": 7, "p": metrics["paired_p"]}
    assert "paired" not in rows[1]  # only the accuracy row is compared item by item
    lo, hi = stats.wilson(0.46, 200)
    text = _change(acc)
    assert f"46.0 % [{100 * lo:.1f}, {100 * hi:.1f}]" in text
    assert "paired: 14 fixed, 7 broken, McNemar p = 0.19" in text
    # a stage without COUNT (pretrain) gets no interval
    assert "[" not in _change(summary("pretrain", {"eval_ppl_before": 2071.0, "eval_ppl": 3.14})[0])


def test_paired_scores_is_a_sign_test_without_ties():
    before = [0.1, 0.5, 0.5, 0.9, 0.2, 0.3, 0.0]
    after = [0.4, 0.5, 0.7, 0.1, 0.6, 0.8, 0.9]  # 5 higher, 1 lower, 1 tie
    got = stats.paired_scores(before, after)
    assert (got["paired_higher"], got["paired_lower"]) == (5, 1)
    assert got["paired_p"] == pytest.approx(scipy_stats.binomtest(5, 6, 0.5).pvalue, abs=1e-4)


def test_a_score_row_shows_its_sign_test():
    from llmkit.report import _change
    from llmkit.stages import summary

    metrics = {"eval_reward_before": 0.19, "eval_reward": 1.01, "eval_prompts": 64, "final_kl": 14.2,
               **stats.paired_scores([0.0] * 64, [1.0] * 50 + [-1.0] * 14)}
    row = summary("ppo", metrics)[0]
    assert row["paired"] == {"higher": 50, "lower": 14, "p": metrics["paired_p"]}
    assert metrics["paired_p"] < 1e-4
    assert _change(row).endswith("(n = 64; paired: 50 higher, 14 lower, sign test p < 0.0001)")
    assert "[" not in _change(row)  # a score has no binomial interval


def test_a_row_with_its_own_paired_test_shows_it_next_to_the_stage_paired_row():
    """GRPO's sampled accuracy carries its own sign test (``<metric>_paired_*``) beside the greedy
    accuracy's McNemar test (``paired_*``); each row shows its own."""
    from llmkit.report import _change
    from llmkit.stages import summary

    sampled = stats.paired_scores([0.25] * 300, [0.5] * 200 + [0.0] * 60 + [0.25] * 40)
    metrics = {"eval_math_accuracy_reward_before": 0.44, "eval_math_accuracy_reward": 0.46, "eval_prompts": 300,
               **stats.paired([True] * 9 + [False] * 6, [False] * 9 + [True] * 6),
               "eval_sampled_accuracy_before": 0.25, "eval_sampled_accuracy": 0.333,
               **{f"eval_sampled_accuracy_{k}": v for k, v in sampled.items()}}
    greedy, samp = summary("grpo", metrics)[:2]
    assert greedy["paired"] == {"fixed": 6, "broken": 9, "p": metrics["paired_p"]}
    assert samp["label"] == "sampled answer accuracy" and samp["n"] == 300
    assert samp["paired"] == {"higher": 200, "lower": 60, "p": sampled["paired_p"]}
    assert _change(samp).endswith("(n = 300; paired: 200 higher, 60 lower, sign test p < 0.0001)")
    del metrics["eval_sampled_accuracy_paired_p"]  # without its own test a row that is not PAIRED shows none
    assert "paired" not in summary("grpo", metrics)[1]


def test_tiny_p_values_are_written_as_a_bound():
    assert stats.p_text(0.0) == "< 0.0001" and stats.p_text(3e-6) == "< 0.0001"
    assert stats.p_text(0.0002) == "= 0.0002" and stats.p_text(0.19) == "= 0.19"
