"""Decisions that never see the test set (holdout), and what each decision was worth (credit): the split, the
prompt's per-class numbers, the counterfactual branch, bit-for-bit runs with credit on and off, and compare's
credit statistics recomputed from the calls tables."""

import csv
import math
import re

import mlflow
import numpy as np
import pytest
import torch
from scipy import stats

from lradvisor.arms import resolve
from lradvisor.config import TrainConfig
from lradvisor.data.files import holdout_split, stratified_subset
from lradvisor.data.registry import CLASSES
from lradvisor.engine import schedules
from lradvisor.engine.branches import branch
from lradvisor.engine.loop import evaluate, train_epoch
from lradvisor.engine.setup import prepare, snapshot
from lradvisor.errors import DataError

from conftest import calls, cli, history, point, runs_of
from fake_gemini import FakeGemini, reply
from fake_openai import FakeOpenAI, chat


def per_class_in(prompt):
    """The per-class numbers of the prompt's 'Per-class ... accuracy:' line, and which split it names."""
    m = re.search(r"- Per-class (\w+) accuracy: (.*)", prompt)
    return m.group(1), {c: float(v) for c, v in re.findall(r"(\w+): ([\d.]+)%", m.group(2))}


def test_holdout_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 30)
    idx = stratified_subset(labels, 0.5, seed=3)  # after subset_ratio, as a run does
    train_idx, val_idx = holdout_split(labels, idx, 0.2, seed=3)
    assert not set(train_idx) & set(val_idx) and set(train_idx) | set(val_idx) == set(idx)
    assert np.bincount(labels[val_idx]).tolist() == [3] * 10  # round(0.2 x 15) of every class
    again = holdout_split(labels, idx, 0.2, seed=3)
    assert (again[0] == train_idx).all() and (again[1] == val_idx).all()
    assert not (holdout_split(labels, idx, 0.2, seed=4)[1] == val_idx).all()
    assert (holdout_split(labels, idx, 0.0, seed=3)[0] == idx).all()  # holdout 0: the training set as it was
    with pytest.raises(DataError, match="no training image"):
        holdout_split(np.arange(10), np.arange(10), 0.1, seed=0)  # one image a class: nothing left to train on


def test_with_a_holdout_the_prompt_reads_validation_not_test(cifar_dir, experiment):
    assert (
        cli(
            "train",
            "--arm",
            "per_class",
            "--advisor",
            "textbook",
            "--holdout",
            0.25,
            "--epochs",
            4,
            "--batch-size",
            16,
            "--lr",
            0.02,
            "--data-dir",
            cifar_dir,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    assert run.data.params["n_val"] == "20" and run.data.params["n_train"] == "60"  # 2 of every class's 8
    assert run.data.tags["decisions_saw_test"] == "0"
    differs = False
    for epoch in (1, 2, 3):
        split, shown = per_class_in(
            mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/advisor/epoch_{epoch:02d}/prompt.txt")
        )
        val = {c: dict(history(run.info.run_id, f"val_class_acc/{c}"))[epoch] for c in CLASSES}
        test = {c: dict(history(run.info.run_id, f"class_acc/{c}"))[epoch] for c in CLASSES}
        assert split == "validation" and shown == {c: round(v, 1) for c, v in val.items()}
        differs |= shown != {c: round(v, 1) for c, v in test.items()}
    assert differs  # the test set's numbers are logged, and the prompt showed others
    assert {"val_loss", "val_acc"} <= set(run.data.metrics)


def test_published_default_reads_test_and_is_tagged_so(cifar_dir, experiment, monkeypatch, tmp_path, capsys):
    with FakeOpenAI([chat("learning rate 0.01")], models=None) as s:
        point(monkeypatch, s)
        assert (
            cli(
                "train",
                "--arm",
                "per_class",
                "--advisor",
                "openai",
                "--llm-model",
                "m",
                "--epochs",
                2,
                "--batch-size",
                20,
                "--data-dir",
                cifar_dir,
                "--experiment",
                experiment,
            )
            == 0
        )
    (run,) = runs_of(experiment)
    assert (
        cli(
            "train",
            "--arm",
            "baseline",
            "--epochs",
            2,
            "--batch-size",
            20,
            "--data-dir",
            cifar_dir,
            "--experiment",
            experiment,
        )
        == 0
    )
    capsys.readouterr()
    assert cli("compare", "--experiment", experiment, "--output-dir", tmp_path) == 0
    out = capsys.readouterr()
    assert out.err.count("mixes runs whose decisions saw the test set") == 1
    assert "| per_class [m] † |" in out.out and "| baseline |" in out.out
    with open(tmp_path / "results.csv") as f:
        assert {r["arm"]: r["decisions_saw_test"] for r in csv.DictReader(f)} == {"baseline": "0", "per_class [m]": "1"}
    assert run.data.tags["decisions_saw_test"] == "1" and run.data.params["n_val"] == "0"
    split, shown = per_class_in(calls(run)[0]["prompt"])
    assert split == "test" and shown == {
        c: round(dict(history(run.info.run_id, f"class_acc/{c}"))[1], 1) for c in CLASSES
    }
    assert not any(k.startswith(("val_", "credit_acc")) for k in run.data.metrics)
    assert not any(k.startswith("credit") for k in calls(run)[0])  # credit off: the published table


def test_a_branch_at_the_runs_own_lr_reproduces_the_run_exactly(tiny_cifar):
    """Credit 0.0: k epochs of the branch equal k epochs of the run, bit for bit, and the run's state comes back
    exactly as it was (weights, momentum, schedule, data order)."""
    cfg = TrainConfig(
        data_dir=tiny_cifar,
        batch_size=8,
        lr=0.05,
        precision="fp32",
        channels_last="0",
        epochs=4,
        step_size=1,
        gamma=0.5,
    )
    s = prepare(cfg, resolve("baseline"), torch.device("cpu"))
    model, opt, sched, autocast, loader, test_loader = (
        s.model,
        s.opt,
        s.sched,
        s.autocast,
        s.train_loader,
        s.test_loader,
    )
    train_epoch(model, opt, loader, autocast)
    schedules.after_epoch("step", sched, None)
    before = snapshot(model, opt, sched, loader)
    branch_loss, branch_acc, _ = branch(s, 2)[0]
    now = snapshot(model, opt, sched, loader)
    assert all(torch.equal(before["model"][k], now["model"][k]) for k in before["model"])
    assert all(
        torch.equal(a["momentum_buffer"], b["momentum_buffer"])
        for a, b in zip(before["opt"]["state"].values(), now["opt"]["state"].values())
    )
    assert before["sched"] == now["sched"] and torch.equal(before["rng"], now["rng"])
    assert opt.param_groups[0]["lr"] == 0.025
    for i in range(2):  # the run itself, from the same state
        train_epoch(model, opt, loader, autocast)
        if i == 0:
            schedules.after_epoch("step", sched, None)
    loss, acc, _ = evaluate(model, test_loader, autocast)
    assert (loss - branch_loss, acc - branch_acc) == (0.0, 0.0)


def test_credit_on_trains_bit_for_bit_as_credit_off(tiny_cifar, experiment):
    common = [
        "--arm",
        "random_control",
        "--epochs",
        3,
        "--batch-size",
        10,
        "--lr",
        0.02,
        "--holdout",
        0.4,
        "--data-dir",
        tiny_cifar,
        "--experiment",
        experiment,
    ]
    assert cli("train", *common) == 0
    assert cli("train", *common, "--credit-epochs", 1) == 0
    on, off = sorted(runs_of(experiment), key=lambda r: r.data.params["credit_epochs"], reverse=True)
    assert on.data.tags["weights_sha256"] == off.data.tags["weights_sha256"]
    assert {k: v for k, v in on.data.params.items() if k != "credit_epochs"} == {
        k: v for k, v in off.data.params.items() if k != "credit_epochs"
    }
    timing = {"epoch_seconds", "images_per_second", "train_seconds", "credit_seconds"}
    new = {"credit_acc", "credit_loss"}
    assert set(on.data.metrics) - set(off.data.metrics) == new
    for key in set(off.data.metrics) - timing:
        assert history(on.info.run_id, key) == history(off.info.run_id, key), key
    rows = [r for r in calls(on) if r["model"] != "guard"]
    assert [r["credit_epochs"] for r in rows] == [1, 1] and all(r["changed"] for r in rows)
    assert [s for s, _ in history(on.info.run_id, "credit_acc")] == [1, 2]  # step = the decision's epoch
    assert on.data.metrics["credit_seconds"] > 0 and off.data.metrics["credit_seconds"] == 0


def test_a_bad_proposal_gets_negative_credit(cifar_dir, experiment, monkeypatch):
    """A stand-in LLM always answering 0.9: the epoch after it blows the loss up, the branch at the
    schedule's 0.02 does not."""
    with FakeOpenAI([chat("The learning rate should be 0.9.")], models=None) as s:
        point(monkeypatch, s)
        assert (
            cli(
                "train",
                "--arm",
                "losses",
                "--advisor",
                "openai",
                "--llm-model",
                "m",
                "--every",
                2,
                "--epochs",
                3,
                "--batch-size",
                16,
                "--lr",
                0.02,
                "--credit-epochs",
                1,
                "--data-dir",
                cifar_dir,
                "--experiment",
                experiment,
            )
            == 0
        )
    (run,) = runs_of(experiment)
    (row,) = calls(run)
    assert row["epoch"] == 2 and row["applied_lr"] == 0.9 and row["credit_epochs"] == 1
    assert row["credit_acc"] < 0 and row["credit_loss"] > 0
    branch_acc = float(re.search(r"on test after epoch 3 \(branch: accuracy ([\d.]+)%", row["credit_note"]).group(1))
    assert row["credit_acc"] == pytest.approx(run.data.metrics["test_acc"] - branch_acc, abs=0.01)
    assert history(run.info.run_id, "credit_acc") == [(2, row["credit_acc"])]


def test_sweep_with_holdout_and_credit_then_compare(tiny_cifar, experiment, tmp_path, capsys, monkeypatch):
    """The issue's done-when: controls and an LLM arm (a stand-in Gemini), two seeds, holdout and credit;
    compare's credit statistics equal what the calls tables give."""
    with FakeGemini([reply("learning rate 0.004")]) as g:
        point(monkeypatch, g)
        assert (
            cli(
                "sweep",
                "--arms",
                "losses,random_control,textbook_control",
                "--seeds",
                "0,1",
                "--holdout",
                0.4,
                "--credit-epochs",
                1,
                "--epochs",
                3,
                "--batch-size",
                10,
                "--lr",
                0.02,
                "--data-dir",
                tiny_cifar,
                "--sweep-id",
                "credit",
                "--parallel",
                2,
                "--experiment",
                experiment,
            )
            == 0
        )
    runs = [r for r in runs_of(experiment) if "arm" in r.data.tags]
    assert len(runs) == 6 and {r.data.tags["decisions_saw_test"] for r in runs} == {"0"}
    for r in runs:  # every applied decision has its credit, the others say why not
        for row in calls(r):
            if row["changed"]:
                assert row["credit_epochs"] == 1 and math.isfinite(row["credit_acc"]), row
            else:
                assert row["credit_epochs"] == 0 and row["credit_note"].startswith("no branch"), row
    capsys.readouterr()
    out = tmp_path / "out"
    assert (
        cli(
            "compare",
            "--sweep-id",
            "credit",
            "--baseline",
            "random_control",
            "--credit-margin",
            0.5,
            "--output-dir",
            out,
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| arm | decisions | credit (points) | 95 % CI | helped | hurt | neutral | credit s |" in printed
    assert (out / "credit.png").stat().st_size > 10_000
    with open(out / "results.csv") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    for arm in ("losses", "random_control", "textbook_control"):
        credits = [
            row["credit_acc"]
            for r in runs
            if r.data.tags["arm"] == arm
            for row in calls(r)
            if row.get("credit_acc") is not None
        ]
        got = rows[arm]
        assert got["decisions_saw_test"] == "0" and int(got["n_decisions"]) == len(credits)
        assert int(got["helped"]) == sum(c > 0.5 for c in credits) and int(got["hurt"]) == sum(
            c < -0.5 for c in credits
        )
        assert int(got["helped"]) + int(got["hurt"]) + int(got["neutral"]) == len(credits)
        assert len(credits) >= 2, arm  # each arm moved the LR in at least 2 of its 4 decisions (2 seeds x 2)
        half = stats.t.ppf(0.975, len(credits) - 1) * np.std(credits, ddof=1) / math.sqrt(len(credits))
        assert float(got["credit_mean"]) == pytest.approx(np.mean(credits))
        assert float(got["credit_ci_low"]) == pytest.approx(np.mean(credits) - half)
        assert float(got["credit_ci_high"]) == pytest.approx(np.mean(credits) + half)
