"""Paired statistics for compare: is an arm's difference from the baseline more than seed noise?

Runs are paired by seed (same seed = same initialisation, data order and augmentation), so the per-seed
differences d_i = arm_i - baseline_i cancel what the seed does to both. With n pairs:
  Δ = mean(d), 95 % CI = Δ ± t(0.975, n-1) · sd(d) / √n, p = two-sided paired t-test (scipy.stats.ttest_rel);
  verdict = "better" if the whole CI lies above +margin, "worse" if below -margin, else "inconclusive".
`mean_ci` is that interval for one sample: compare uses it for the credit over a row's decisions.
"""

import math
import statistics


def paired(arm, base, margin=0.0):
    """arm, base: final accuracies (points) of the same seeds in the same order."""
    from scipy import stats
    n = len(arm)
    out = {"delta_vs_baseline": None, "delta_ci_low": None, "delta_ci_high": None, "p_value": None, "verdict": ""}
    if n == 0:
        return out
    d = [a - b for a, b in zip(arm, base)]
    out["delta_vs_baseline"] = statistics.mean(d)
    if n < 2:
        out["verdict"] = "inconclusive"
        return out
    _, low, high = mean_ci(d)
    # Every pair differing by the same amount (Δ = 0 exactly, from identical runs) has no t statistic.
    p = float(stats.ttest_rel(arm, base).pvalue) if statistics.stdev(d) > 0 else math.nan
    out.update(delta_ci_low=low, delta_ci_high=high, p_value=None if math.isnan(p) else p,
               verdict="better" if low > margin else "worse" if high < -margin else "inconclusive")
    return out


def mean_ci(values):
    """(mean, 95 % CI low, high) of independent-looking values by the t distribution; no CI below 2 values."""
    from scipy import stats
    n = len(values)
    if n == 0:
        return None, None, None
    mean = statistics.mean(values)
    if n < 2:
        return mean, None, None
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half
