"""Data sets beyond CIFAR-10: scikit-learn's digits (real images, no download), CIFAR-100 in its real on-disk
format with 100 named classes, a sweep that crosses data sets, and compare's per-task and pooled rows."""

import csv
import math
import os
import statistics
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch

from lradvisor.data import files
from lradvisor.data import loader as batches
from lradvisor.data.registry import CIFAR100_CLASSES, DATASETS
from lradvisor.llm import prompt
from lradvisor.study import stats

from conftest import ROOT, cli, history, runs_of


def test_digits_are_a_fixed_stratified_split_of_the_bundled_images():
    from sklearn.datasets import load_digits

    x, y, xt, yt = files.load("no-such-folder", "digits")  # nothing is read from data_dir, nothing downloaded
    assert x.shape == (1438, 3, 32, 32) and xt.shape == (359, 3, 32, 32) and x.dtype == np.uint8
    share = np.bincount(yt) / (np.bincount(y) + np.bincount(yt))
    assert np.all(np.abs(share - 0.2) < 0.02), share  # every class 20 % in the test set
    again = files.load("elsewhere", "digits")
    assert np.array_equal(again[3], yt) and np.array_equal(again[2], xt)  # one test set for every run and seed
    d = load_digits()
    train, test = files.digits_split(d.target)
    assert not set(train) & set(test) and len(train) + len(test) == 1797
    # scikit-learn's images (read from its file without importing it), each scaled to 0..255, every pixel a 4x4
    # block, the same in the three channels.
    assert np.array_equal(yt, d.target[test]) and np.array_equal(y, d.target[train])
    assert np.array_equal(xt[:, 1, ::4, ::4], np.round(d.images[test] * 255 / 16).astype(np.uint8))
    assert np.array_equal(x[:, 0, ::4, ::4], np.round(d.images[train] * 255 / 16).astype(np.uint8))
    assert np.array_equal(xt[5, 0], xt[5, 2]) and np.array_equal(xt[5, 0, 8:12, 8:12], np.full((4, 4), xt[5, 0, 8, 8]))
    # Normalised by its own training statistics (the registry's numbers, recomputed).
    f = x.astype(np.float64) / 255
    assert abs(f.mean() - DATASETS["digits"]["mean"][0]) < 5e-4 and abs(f.std() - DATASETS["digits"]["std"][0]) < 5e-4


def test_digits_are_never_flipped_cifar_is():
    """Columns 1..32 left to right: a crop keeps them increasing, a flip reverses them."""
    x = torch.arange(1, 33, dtype=torch.uint8).expand(64, 3, 32, 32).contiguous()
    y = torch.zeros(64, dtype=torch.long)

    def reversed_rows(dataset):
        xb, _ = next(iter(batches.Loader(x, y, 64, train=True, seed=0, dataset=dataset)))
        row = xb[:, 0, 16]  # normalised: still increasing where the pixels were, a constant where padding was
        pad = (0 - DATASETS[dataset]["mean"][0]) / DATASETS[dataset]["std"][0]
        return sum(bool((r[(r - pad).abs() > 1e-4].diff() < 0).all()) for r in row)

    assert reversed_rows("digits") == 0
    assert 16 < reversed_rows("cifar10") < 48  # Binomial(64, 0.5)


def test_digits_run_offline_and_say_what_they_are_best_tried_with(experiment):
    """No download, no key (learning itself: test_train.py's bf16/fp32 test trains on digits). The published defaults
    are kept and the run says, once, what digits is best tried with."""
    with pytest.warns(UserWarning) as said:
        assert (
            cli("train", "--dataset", "digits", "--subset-ratio", 0.05, "--epochs", 1, "--experiment", experiment) == 0
        )
    assert [str(w.message) for w in said if "best tried" in str(w.message)] == [
        "digits is best tried with --lr 0.02 --batch-size 16; this run trains with lr 0.1, batch_size 128 as given"
    ]
    (run,) = runs_of(experiment)
    assert run.data.params["dataset"] == "digits" and run.data.tags["data_md5"] == "bundled"
    assert run.data.params["lr"] == "0.1" and run.data.params["batch_size"] == "128"
    assert run.info.run_name == "baseline-digits-s0" and run.data.params["n_test"] == "359"
    assert sorted(k for k in run.data.metrics if k.startswith("class_acc/")) == [f"class_acc/{d}" for d in "0123456789"]


def test_cifar100_trains_with_100_named_classes_readable_in_prompt_and_table(tmp_path, experiment):
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "make_fake_cifar.py"),
            "--dataset",
            "cifar100",
            "--out",
            str(tmp_path),
            "--train-per-class",
            "3",
            "--test-per-class",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    assert (
        cli(
            "train",
            "--dataset",
            "cifar100",
            "--data-dir",
            tmp_path,
            "--arm",
            "per_class",
            "--advisor",
            "random",
            "--holdout",
            0.34,
            "--epochs",
            2,
            "--batch-size",
            100,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    run_id = run.info.run_id
    assert run.info.run_name == "per_class-cifar100-s0" and run.data.params["n_val"] == "100"
    # No metric per class: one table of (epoch, class) rows, shown by the UI as a table next to the calls.
    assert not [k for k in run.data.metrics if "class_acc/" in k]
    assert {t["path"] for t in eval(run.data.tags["mlflow.loggedArtifacts"].replace("null", "None"))} == {
        "advisor/calls.json",
        "class_acc.json",
    }
    table = mlflow.artifacts.load_dict(f"runs:/{run_id}/class_acc.json")
    rows = [dict(zip(table["columns"], v)) for v in table["data"]]
    assert [r["class"] for r in rows] == list(CIFAR100_CLASSES) * 2 and [r["epoch"] for r in rows] == [1] * 100 + [
        2
    ] * 100
    for epoch in (1, 2):  # the table's test accuracy is the logged one, class by class (one test image each)
        mine = [r["test_acc"] for r in rows if r["epoch"] == epoch]
        assert math.isclose(statistics.mean(mine), dict(history(run_id, "test_acc"))[epoch], abs_tol=1e-6)
    # The prompt: the mean, worst 5 and best 5 of the validation split, saying so; the real names.
    calls = mlflow.artifacts.load_dict(f"runs:/{run_id}/advisor/calls.json")
    (text,) = [dict(zip(calls["columns"], v))["prompt"] for v in calls["data"]]
    val = {r["class"]: r["val_acc"] for r in rows if r["epoch"] == 1}
    assert f"- Per-class validation accuracy: {prompt.per_class(val)}\n" in text
    assert "over 100 classes; worst 5: " in text and "; best 5: " in text and len(text) < 1500


def test_sweep_crosses_data_sets(cifar_dir, experiment):
    assert (
        cli(
            "sweep",
            "--dataset",
            "digits,cifar10",
            "--arms",
            "baseline",
            "--seeds",
            0,
            "--epochs",
            1,
            "--subset-ratio",
            0.05,
            "--batch-size",
            32,
            "--data-dir",
            cifar_dir,
            "--sweep-id",
            "two-tasks",
            "--experiment",
            experiment,
        )
        == 0
    )
    runs = [r for r in runs_of(experiment) if r.data.tags.get("role") == "arm"]
    assert sorted((r.info.run_name, r.data.params["dataset"]) for r in runs) == [
        ("baseline-digits-s0", "digits"),
        ("baseline-s0", "cifar10"),
    ]
    assert len({r.data.tags["sweep_key"] for r in runs}) == 2
    (parent,) = [r for r in runs_of(experiment) if r.data.tags.get("role") == "sweep"]
    assert parent.data.params["datasets"] == "digits,cifar10"


def test_compare_rows_per_data_set_and_the_pooled_row(cifar_dir, experiment, tmp_path, capsys):
    """Two arms x two data sets x three seeds: rows never pool data sets, each row is paired with its own data set's
    baseline, and the pooled row is the DerSimonian-Laird combination of the two Δs, computed here by hand. (One
    epoch; onecycle's LR moves within it, so its Δ varies by seed.)"""
    for dataset, flags in (
        ("digits", ["--subset-ratio", 0.3, "--lr", 0.01, "--batch-size", 16, "--width", 16]),
        ("cifar10", ["--data-dir", cifar_dir, "--lr", 0.05, "--batch-size", 8, "--width", 16]),
    ):
        for arm in ("baseline", "onecycle"):
            for seed in (0, 1, 2):
                assert (
                    cli(
                        "train",
                        "--dataset",
                        dataset,
                        "--arm",
                        arm,
                        "--seed",
                        seed,
                        "--epochs",
                        1,
                        *flags,
                        "--experiment",
                        experiment,
                    )
                    == 0
                )
    out = tmp_path / "out"
    assert cli("compare", "--experiment", experiment, "--output-dir", out) == 0
    rows = {(r["arm"], r["dataset"]): r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {
        ("baseline [dataset=digits]", "digits"),
        ("onecycle [dataset=digits]", "digits"),
        ("baseline [dataset=cifar10]", "cifar10"),
        ("onecycle [dataset=cifar10]", "cifar10"),
        ("onecycle", "pooled"),
    }
    finals = {}
    for r in runs_of(experiment):
        if "arm" in r.data.tags:
            finals[(r.data.tags["arm"], r.data.params["dataset"], r.data.params["seed"])] = r.data.metrics["test_acc"]
    deltas, ses = [], []
    for ds in ("digits", "cifar10"):
        assert rows[(f"onecycle [dataset={ds}]", ds)]["baseline"] == f"baseline [dataset={ds}]"
        d = [finals[("onecycle", ds, s)] - finals[("baseline", ds, s)] for s in "012"]
        assert math.isclose(float(rows[(f"onecycle [dataset={ds}]", ds)]["delta_vs_baseline"]), statistics.mean(d))
        deltas.append(statistics.mean(d))
        ses.append(statistics.stdev(d) / math.sqrt(3))
    # DerSimonian-Laird by hand (k = 2): Q = w1 w2 (d1 - d2)^2 / (w1 + w2), C = w1 + w2 - (w1^2 + w2^2)/(w1 + w2);
    # Hartung-Knapp: SE^2 = max(1, sum w* (d - mu)^2 / (k - 1)) / sum w*, CI = mu +- t(0.975, 1) SE.
    w1, w2 = 1 / ses[0] ** 2, 1 / ses[1] ** 2
    q = w1 * w2 * (deltas[0] - deltas[1]) ** 2 / (w1 + w2)
    tau2 = max(0.0, (q - 1) / (w1 + w2 - (w1**2 + w2**2) / (w1 + w2)))
    v1, v2 = ses[0] ** 2 + tau2, ses[1] ** 2 + tau2
    mu = (deltas[0] / v1 + deltas[1] / v2) / (1 / v1 + 1 / v2)
    hk = ((deltas[0] - mu) ** 2 / v1 + (deltas[1] - mu) ** 2 / v2) / 1
    se = (max(1.0, hk) / (1 / v1 + 1 / v2)) ** 0.5
    pooled = rows[("onecycle", "pooled")]
    assert math.isclose(float(pooled["delta_vs_baseline"]), mu, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(float(pooled["tau2"]), tau2, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(float(pooled["delta_ci_low"]), mu - 12.706204736174707 * se, rel_tol=1e-9, abs_tol=1e-9)
    assert pooled["verdict"] in ("better", "worse", "inconclusive") and pooled["pairs"] == "6"
    md = (out / "results.md").read_text()
    assert md.index("### data set: cifar10") < md.index("### data set: digits") < md.index("### pooled over data sets")
    assert "τ²" in md and os.path.getsize(out / "forest.png") > 0 and os.path.getsize(out / "class_heatmap.png") > 0


def test_pooled_by_hand_with_three_tasks():
    """stats.pooled against the formulas worked through for three tasks that disagree (τ² > 0)."""
    d, se = [2.0, -1.0, 0.5], [0.5, 1.0, 0.25]  # fixed-effect weights 1/se²: 4, 1, 16
    fixed = (8.0 - 1.0 + 8.0) / 21.0
    q = 4 * (2 - fixed) ** 2 + 1 * (-1 - fixed) ** 2 + 16 * (0.5 - fixed) ** 2
    tau2 = (q - 2) / (21 - (16 + 1 + 256) / 21)
    ws = [1 / (s**2 + tau2) for s in se]
    mu = sum(a * b for a, b in zip(ws, d)) / sum(ws)
    hk = sum(w * (x - mu) ** 2 for w, x in zip(ws, d)) / 2
    out = stats.pooled(d, se)
    assert tau2 > 0 and math.isclose(out["tau2"], tau2) and math.isclose(out["delta_vs_baseline"], mu)
    assert math.isclose(out["delta_ci_high"] - mu, 4.302652729749464 * math.sqrt(max(1, hk) / sum(ws)))  # t(0.975, 2)
    same = stats.pooled([1.0, 1.0], [0.5, 0.5])  # tasks that agree: no between-task variance, the fixed effect,
    assert same["tau2"] == 0 and same["delta_vs_baseline"] == 1.0  # and an interval no narrower than the weights say
    assert math.isclose(same["delta_se"], 0.5 / math.sqrt(2))
