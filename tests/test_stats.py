"""Wilson intervals, McNemar's exact test and the comparison verdicts built on them."""

import pytest

from capsrobust import report
from capsrobust.stats import mcnemar_exact, wilson_interval
from capsrobust.sweep import SweepConfig, SweepResult


def test_wilson_interval_matches_the_textbook_values():
    # Wilson (1927) score interval, z = 1.95996: 50 of 100 -> 0.4038 to 0.5962; 0 of 50 -> 0 to 0.0714.
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 50) == pytest.approx((0.0, 0.0714), abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_mcnemar_exact_is_the_two_sided_binomial_tail_of_the_discordant_pairs():
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0


def test_verdicts_name_the_more_robust_model_only_when_the_test_rejects_chance():
    result = SweepResult(SweepConfig(methods=(), eps_values=(0.1,)), verdicts=[
        {"eps": 0.1, "first": "capsnet-small-mnist-20261201-000000-abcdef",
         "second": "cnn-small-mnist-20261201-000000-123456", "images": 1000, "first_accuracy": 0.612,
         "second_accuracy": 0.54, "only_first_robust": 100, "only_second_robust": 28, "p_value": mcnemar_exact(100, 28)},
        {"eps": 0.3, "first": "capsnet-small-mnist-20261201-000000-abcdef",
         "second": "cnn-small-mnist-20261201-000000-123456", "images": 1000, "first_accuracy": 0.01,
         "second_accuracy": 0.012, "only_first_robust": 1, "only_second_robust": 3, "p_value": mcnemar_exact(1, 3)}])
    first, second = report.verdict_lines(result)
    # The more robust model and its figure come first, whichever order the sweep ran them in.
    swapped = SweepResult(result.config, verdicts=[{**result.verdicts[0], "first": result.verdicts[0]["second"],
                                                    "second": result.verdicts[0]["first"], "first_accuracy": 0.54,
                                                    "second_accuracy": 0.612}])
    assert report.verdict_lines(swapped) == [first]
    assert first.startswith("capsnet-small more robust than cnn-small at eps 0.1: 61.2% vs 54.0%, p = ")
    assert first.endswith("1,000 images")
    assert second.startswith("capsnet-small and cnn-small not distinguishable at eps 0.3: 1.0% vs 1.2%, p = 0.62")
