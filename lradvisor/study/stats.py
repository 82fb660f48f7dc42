"""Paired statistics for compare: is an arm's difference from the baseline more than seed noise?

Runs are paired by seed (same seed = same initialisation, data order and augmentation), so the per-seed
differences d_i = arm_i - baseline_i cancel what the seed does to both. With n pairs:
  Δ = mean(d), 95 % CI = Δ ± t(0.975, n-1) · sd(d) / √n, p = two-sided paired t-test (scipy.stats.ttest_rel);
  verdict = "better" if the whole CI lies above +margin, "worse" if below -margin, else "inconclusive".
`mean_ci` is that interval for one sample: compare uses it for the credit over a row's decisions.

Across data sets, `pooled` combines one Δ_i per data set (with its variance v_i = SE_i² = sd(d_i)² / n_i) by
random effects: DerSimonian–Laird's between-task variance τ² from fixed-effect weights w_i = 1/v_i,
Q = Σ w_i (Δ_i − Δ_fixed)², τ² = max(0, (Q − (k−1)) / (Σw − Σw²/Σw)); then w*_i = 1/(v_i + τ²) and
Δ = Σ w*_i Δ_i / Σ w*_i. Its interval is the (modified) Hartung–Knapp one: SE² = max(1, Σ w*_i (Δ_i − Δ)² /
(k−1)) / Σ w*_i, 95 % CI = Δ ± t(0.975, k−1) · SE, p from the same t. The plain normal interval Δ ± 1.96 /
√(Σ w*_i) treats each v_i, estimated from a handful of seeds, as exact: with 3 seeds per task it gave
p = 6e-170 from six pairs here. τ² is 0 when the tasks agree within their own noise.

The fixed-n interval is valid for a number of pairs fixed in advance: adding seeds and looking again inflates its
error rate with every look. `confidence_sequence` is valid at every n at once (anytime-valid), so a sweep may look
after every seed and stop when it is clear (sweep --until-decided). It is Wang & Ramdas's (2024, "Anytime-valid
t-tests and confidence sequences for Gaussian means with unknown variance") test martingale for H0: mean = m,
scale-invariant and mixed over the standardized effect θ = (mean − m)/σ with a Gaussian N(0, 1/c²):

    G_n(m) = sqrt(c² / (n + c²)) · ((n + c²) V / ((n + c²) V − S²))^(n/2),  S = Σ(d_i − m), V = Σ(d_i − m)²

(the ratio of the densities of the maximal scale invariant under θ and under 0, σ integrated out with the right
Haar measure dσ/σ; tests/test_sequential.py checks it against that integral numerically). By Ville's inequality
P(sup_n G_n(m) ≥ 1/α) ≤ α, so {m : G_n(m) < 1/α} is a (1 − α) confidence sequence, in closed form
mean ± sqrt(k · SS / (n (n − k))) with k = (n + c²)(1 − (α c / sqrt(n + c²))^(2/n)), SS = Σ(d_i − mean)², and the
whole line while k ≥ n. `e_value` is G_n(0): the evidence against "no difference". The price of looking at every n:
with c = 0.25 and α = 0.05 no interval excludes anything before 3 pairs, and every interval is wider than the
fixed-n one (README: Sequential verdicts).
"""

import math
import statistics


def paired(arm, base, margin=0.0):
    """arm, base: final accuracies (points) of the same seeds in the same order."""
    from scipy import stats

    n = len(arm)
    out = {
        "delta_vs_baseline": None,
        "delta_se": None,
        "delta_ci_low": None,
        "delta_ci_high": None,
        "p_value": None,
        "verdict": "",
    }
    if n == 0:
        return out
    d = [a - b for a, b in zip(arm, base)]
    out["delta_vs_baseline"] = statistics.mean(d)
    out["delta_se"] = statistics.stdev(d) / math.sqrt(n) if n > 1 else None  # what pooled weighs by
    if n < 2:
        out["verdict"] = "inconclusive"
        return out
    _, low, high = mean_ci(d)
    # Every pair differing by the same amount (Δ = 0 exactly, from identical runs) has no t statistic.
    p = float(stats.ttest_rel(arm, base).pvalue) if statistics.stdev(d) > 0 else math.nan
    out.update(
        delta_ci_low=low,
        delta_ci_high=high,
        p_value=None if math.isnan(p) else p,
        verdict="better" if low > margin else "worse" if high < -margin else "inconclusive",
    )
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


def pooled(deltas, ses, margin=0.0):
    """Random-effects pool of per-data-set Δ_i with standard errors SE_i (all > 0): DerSimonian–Laird τ² and
    weights, Hartung–Knapp interval (module docstring)."""
    from scipy import stats

    k = len(deltas)
    v = [se**2 for se in ses]
    w = [1 / x for x in v]
    fixed = sum(wi * d for wi, d in zip(w, deltas)) / sum(w)
    q = sum(wi * (d - fixed) ** 2 for wi, d in zip(w, deltas))
    c = sum(w) - sum(wi**2 for wi in w) / sum(w)
    tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
    ws = [1 / (x + tau2) for x in v]
    delta = sum(wi * d for wi, d in zip(ws, deltas)) / sum(ws)
    spread = sum(wi * (d - delta) ** 2 for wi, d in zip(ws, deltas)) / (k - 1)
    se = math.sqrt(max(1.0, spread) / sum(ws))  # never narrower than the weights alone say
    half = stats.t.ppf(0.975, k - 1) * se
    return {
        "delta_vs_baseline": delta,
        "delta_se": se,
        "delta_ci_low": delta - half,
        "delta_ci_high": delta + half,
        "p_value": float(2 * stats.t.sf(abs(delta) / se, k - 1)),
        "tau2": tau2,
        "verdict": "better" if delta - half > margin else "worse" if delta + half < -margin else "inconclusive",
    }


# ----------------------------------------------------------------------------------------------------------
# Anytime-valid (module docstring)

MIXING = 0.25  # c: the mixture over the standardized effect has SD 1/c = 4 (why: README, Sequential verdicts)


def e_value(deltas, m=0.0, c=MIXING):
    """G_n(m): the scale-invariant t-test martingale's value after the pairs `deltas`; 1 with fewer than 2."""
    n = len(deltas)
    x = [d - m for d in deltas]
    v = sum(a * a for a in x)
    if n < 2 or v == 0:
        return 1.0
    a = n + c * c
    return math.sqrt(c * c / a) * (1 - sum(x) ** 2 / v / a) ** (-n / 2)


def confidence_sequence(deltas, alpha=0.05, c=MIXING):
    """(low, high): the anytime-valid (1 − alpha) confidence sequence for the mean of `deltas`, at their n."""
    n = len(deltas)
    if n < 2:
        return -math.inf, math.inf
    a = n + c * c
    k = a * (1 - (alpha * c / math.sqrt(a)) ** (2 / n))
    if k >= n:  # not enough pairs yet to exclude anything at this alpha
        return -math.inf, math.inf
    mean = statistics.mean(deltas)
    half = math.sqrt(k * sum((d - mean) ** 2 for d in deltas) / (n * (n - k)))
    return mean - half, mean + half


def anytime_verdict(low, high, margin=0.0):
    """equivalent: the whole sequence within ±margin (margin > 0); better / worse: it excludes 0; else inconclusive."""
    if margin > 0 and -margin < low and high < margin:
        return "equivalent"
    return "better" if low > 0 else "worse" if high < 0 else "inconclusive"
