"""Sequential verdicts: the anytime-valid e-process and confidence sequence of study/stats.py against their
definition, their error rate when looked at after every pair (simulated), and a sweep that stops when it is clear."""

import csv
import math
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import yaml
from scipy import integrate
from scipy import stats as sps

from lradvisor.study import stats

from conftest import ROOT, cli, runs_of
from fake_openai import FakeOpenAI, chat


def e_value_by_integration(x, c=stats.MIXING):
    """The definition, slowly: the density of the data's scale-invariant part (σ integrated out with dσ/σ) mixed over
    the standardized effect θ ~ N(0, 1/c²), over its density under θ = 0."""
    x = np.asarray(x, float)
    n, scale = len(x), np.sqrt(np.mean(x * x))

    def invariant(theta):  # ∫ σ^-n exp(-Σ(x - θσ)² / 2σ²) dσ/σ, with σ = scale·e^u
        f = lambda u: math.exp(-n * u - np.sum((x / scale - theta * math.exp(u)) ** 2) / (2 * math.exp(2 * u)))  # noqa: E731
        return integrate.quad(f, -30, 30, limit=200)[0]

    mixed = integrate.quad(lambda t: invariant(t) * sps.norm.pdf(t, scale=1 / c), -12 / c, 12 / c, limit=200)[0]
    return mixed / invariant(0.0)


@pytest.mark.parametrize("x", [[1.0, 2.0], [0.3, -0.1, 0.5], [2.0, 2.5, 1.5, 3.0], [-1.0, 0.2, 0.4, -0.3, 0.1]])
def test_the_e_value_is_the_integral_it_is_said_to_be(x):
    assert stats.e_value(x) == pytest.approx(e_value_by_integration(x), rel=1e-4)


def test_the_sequence_is_where_the_e_value_stays_below_one_over_alpha():
    rng = np.random.default_rng(0)
    for n in (3, 5, 10):
        d = list(rng.normal(1.0, 2.0, n))
        low, high = stats.confidence_sequence(d, 0.05)
        assert stats.e_value(d, low) == pytest.approx(20, rel=1e-6) == stats.e_value(d, high)
        assert stats.e_value(d, (low + high) / 2) < 20 and stats.e_value(d, high + 0.1) > 20
    assert stats.confidence_sequence([1.0, 2.0], 0.05) == (-math.inf, math.inf)  # 2 pairs cannot exclude anything


def simulate(effect, sequences=4000, pairs=30, alpha=0.05, seed=0):
    """Peek after every pair from the 3rd to the 30th: (share of sequences that ever rejected Δ = 0 by the anytime
    sequence, by the fixed-n t-test, median round the sequence stopped at)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(effect, 1.0, (sequences, pairs))
    anytime, fixed, stops = np.zeros(sequences, bool), np.zeros(sequences, bool), np.full(sequences, np.inf)
    for n in range(3, pairs + 1):
        seen = d[:, :n]
        for i in np.flatnonzero(~anytime):
            low, high = stats.confidence_sequence(list(seen[i]), alpha)
            if low > 0 or high < 0:
                anytime[i], stops[i] = True, n
        fixed |= sps.ttest_1samp(seen, 0.0, axis=1).pvalue < alpha
    return anytime.mean(), fixed.mean(), np.median(stops)


def test_peeking_after_every_pair_keeps_the_anytime_error_rate_and_breaks_the_fixed_one():
    """Under no difference, looking after every pair up to 30: the anytime sequence still wrongly rejects at most
    alpha of the time (within Monte Carlo error), the fixed-n t-test far more; under a true difference the sequence
    stops, and soon."""
    anytime, fixed, _ = simulate(0.0, sequences=2000)
    margin = 3 * math.sqrt(0.05 * 0.95 / 2000)
    print(
        f"\nno difference, 2000 sequences peeked at 3..30 pairs: anytime rejects {anytime:.3f}, "
        f"fixed-n t-test {fixed:.3f}"
    )
    assert anytime <= 0.05 + margin
    assert fixed > 0.05 + margin
    rejected, _, median = simulate(1.0, sequences=500, seed=1)  # a difference of one standard deviation
    print(f"a difference of 1 sd: the sequence stopped in {rejected:.1%} of 500, median at {median:.0f} pairs")
    assert rejected > 0.95 and median <= 15


def test_a_sweep_until_decided_stops_an_identical_arm_at_once_and_a_bad_one_by_max_seeds(tmp_path, experiment, capsys):
    """Two models of one LLM arm, each on its own stand-in server: one replies an LR 20x the schedule's (the run
    blows up), the other the schedule's own LR (it trains bit for bit as the baseline). With margin 1 the second is
    decided equivalent in the first round (its differences are exactly 0) and gets no more seeds. The first is worse by
    tens of points, but how far apart its seeds lie depends on the CPU's numerics (on tiny data the baseline ends
    anywhere from 10 to 60 %): it is decided worse in the first round or runs to max_seeds, never anything else, and
    the runs, the round metrics and the table say the same."""
    data = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "make_fake_cifar.py"),
            "--out",
            str(data),
            "--train-per-class",
            "10",
            "--test-per-class",
            "4",
        ],
        check=True,
        capture_output=True,
    )
    with FakeOpenAI([chat("LR 0.2")]) as bad, FakeOpenAI([chat("LR 0.01")]) as same:
        models = tmp_path / "models.yaml"
        models.write_text(
            yaml.safe_dump(
                {
                    name: {
                        "provider": "openai",
                        "base_url": s.env()["OPENAI_BASE_URL"],
                        "model": "fake-model-7b-instruct",
                    }
                    for name, s in (("bad", bad), ("same", same))
                }
            )
        )
        flags = [
            "sweep",
            "--arms",
            "baseline,losses",
            "--llm-models",
            "bad,same",
            "--models",
            models,
            "--until-decided",
            "--min-seeds",
            3,
            "--max-seeds",
            4,
            "--margin",
            1,
            "--sweep-id",
            "seq",
            "--data-dir",
            data,
            "--lr",
            0.01,
            "--batch-size",
            10,
            "--epochs",
            3,
            "--width",
            16,
            "--parallel",
            2,
            "--experiment",
            experiment,
        ]
        assert cli(*flags) == 0
        out = capsys.readouterr().out
        children = {r.info.run_name for r in runs_of(experiment) if r.data.tags.get("role") == "arm"}
        (parent,) = [r for r in runs_of(experiment) if r.data.tags.get("role") == "sweep"]
        client = mlflow.MlflowClient()
        table = client.load_table(parent.info.experiment_id, "sequential.json", run_ids=[parent.info.run_id])
        said = list(zip(table["round"], table["arm"], table["verdict"]))
        assert said[:2] == [(1, "losses [bad]", said[0][2]), (1, "losses [same]", "equivalent")]
        bad_seeds = 3 if said[0][2] == "worse" else 4  # decided in round 1, or open until max_seeds
        assert said[2:] == ([] if bad_seeds == 3 else [(2, "losses [bad]", said[2][2])])
        assert said[-1][2] in ("worse", "inconclusive") and table["delta"][0] < -5
        assert children == {f"baseline-s{i}" for i in range(bad_seeds)} | {
            f"losses-s{i} [bad]" for i in range(bad_seeds)
        } | {
            "losses-s0 [same]",
            "losses-s1 [same]",
            "losses-s2 [same]",
        }
        assert parent.data.tags["verdict.losses _same_"].startswith("equivalent at round 1 (3 seeds): CS [0, 0]")
        assert parent.data.tags["verdict.losses _bad_"].startswith(f"{said[-1][2]} at round {bad_seeds - 2} ")
        assert f"every arm decided; {3 + bad_seeds} arm seeds trained of the 8" in out
        assert [m.value for m in client.get_metric_history(parent.info.run_id, "arms_open")] == [2, 1][: bad_seeds - 2]
        assert cli(*flags) == 0  # the same command again: everything is decided, nothing is trained again
        assert len([r for r in runs_of(experiment) if r.data.tags.get("role") == "arm"]) == len(children)
    assert cli("compare", "--sweep-id", "seq", "--margin", 1, "--output-dir", tmp_path / "out") == 0
    with open(tmp_path / "out" / "results.csv") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert rows["losses [bad]"]["anytime_verdict"] == said[-1][2] and float(rows["losses [bad]"]["cs_low"]) < 0
    assert float(rows["losses [same]"]["cs_low"]) == float(rows["losses [same]"]["cs_high"]) == 0.0
    assert rows["losses [same]"]["anytime_verdict"] == "equivalent"
