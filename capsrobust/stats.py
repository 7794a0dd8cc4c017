"""The statistics every robustness figure carries: Wilson intervals and McNemar's exact test, from scipy.stats.

A robust accuracy measured on n images is a binomial proportion: on 50 images its standard error reaches 7 points, so
a figure without an interval cannot say whether a 3-point gap is real. Two models (or two attacks) evaluated on the
same images are compared with McNemar's exact test, which looks only at the images the two disagree on.
"""

from collections.abc import Iterable

from scipy.stats import binomtest

CONFIDENCE = 0.95


def wilson_interval(successes: int, trials: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of `successes / trials`, or None when there are no trials."""
    if trials <= 0:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(interval.low), float(interval.high)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided p-value of McNemar's exact test: of the pairs where exactly one of two paired outcomes holds,
    `only_first` favour the first and `only_second` the second; under the null hypothesis each is a fair coin."""
    discordant = int(only_first) + int(only_second)
    return float(binomtest(int(only_first), discordant, 0.5).pvalue) if discordant else 1.0


def outcome_bits(flags: Iterable[bool]) -> str:
    """Per-image outcomes `(n,)` bool as a string of "1" and "0", as reports store them: what a paired test between
    two runs on the same images (`mcnemar_exact`) needs."""
    return "".join("1" if flag else "0" for flag in flags)
