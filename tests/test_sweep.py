"""Sweep and compare against a real `mlflow server` on a loopback port, over HTTP."""

import csv
import math
import statistics

import matplotlib.image
import mlflow
import pytest
import scipy.stats

from conftest import cli, mlflow_run, point
from fake_gemini import FakeGemini, error, reply

SHARED = {"epochs": 2, "batch_size": 20, "subset_ratio": 0.5, "width": 16}  # 10 of tiny_cifar's images


def sweep_runs(client, sweep_id):
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exp_ids, f"tags.sweep_id = '{sweep_id}'")


def test_sweep_then_compare_through_mlflow_run(tiny_cifar, remote, tmp_path, capfd):
    with FakeGemini([reply("The learning rate should be 0.05.")]) as g:
        p = mlflow_run(
            "sweeps",
            env=g.env(),
            entry_point="sweep",
            arms="baseline,losses",
            seeds="0,1",
            sweep_id="s1",
            parallel=2,
            data_dir=tiny_cifar,
            **SHARED,
        )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "sweep s1: 4 finished, 0 failed, 0 skipped" in p.stdout

    runs = sweep_runs(remote, "s1")
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "arm"]
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert parent.data.tags["mlflow.runName"] == "sweep-s1"  # not mlflow run's random name
    assert {(r.data.tags["arm"], r.data.params["seed"]) for r in children} == {
        ("baseline", "0"),
        ("baseline", "1"),
        ("losses", "0"),
        ("losses", "1"),
    }
    assert all(
        r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children
    )
    assert {r.data.params["width"] for r in children} == {"16"}  # -P width=16, through the sweep to each child

    out = tmp_path / "cmp"
    p = mlflow_run("sweeps", entry_point="compare", sweep_id="s1", output_dir=out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| arm | seeds | final test acc (%)" in p.stdout

    assert "| losses | 0,1 |" in p.stdout and "verdict" in p.stdout
    for name, size in [("overlay_losses.png", (800, 1200)), ("overview.png", (800, 1200))]:
        assert matplotlib.image.imread(out / name).shape[:2] == size
    assert matplotlib.image.imread(out / "class_heatmap.png").shape[1] == 1000

    # Every number in the table is what the server's metric histories say.
    final = {}
    for r in children:
        hist = sorted(remote.get_metric_history(r.info.run_id, "test_acc"), key=lambda m: m.step)
        final.setdefault(r.data.tags["arm"], []).append(hist[-1].value)
    with open(out / "results.csv") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    for arm, accs in final.items():
        assert float(rows[arm]["final_test_acc_mean"]) == pytest.approx(statistics.mean(accs), abs=1e-9)
        assert float(rows[arm]["final_test_acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-9)
    assert float(rows["losses"]["delta_vs_baseline"]) == pytest.approx(
        statistics.mean(final["losses"]) - statistics.mean(final["baseline"]), abs=1e-9
    )
    assert rows["baseline"]["delta_vs_baseline"] == ""
    # Paired by seed: CI and p as scipy computes them from the server's histories.
    by_seed = {}
    for r in children:
        hist = sorted(remote.get_metric_history(r.info.run_id, "test_acc"), key=lambda m: m.step)
        by_seed.setdefault(r.data.tags["arm"], {})[r.data.params["seed"]] = hist[-1].value
    arm, base = [by_seed["losses"][s] for s in "01"], [by_seed["baseline"][s] for s in "01"]
    d = [a - b for a, b in zip(arm, base)]
    half = scipy.stats.t.ppf(0.975, 1) * statistics.stdev(d) / 2**0.5
    assert float(rows["losses"]["delta_ci_low"]) == pytest.approx(statistics.mean(d) - half, abs=1e-9)
    assert float(rows["losses"]["delta_ci_high"]) == pytest.approx(statistics.mean(d) + half, abs=1e-9)
    p_value = scipy.stats.ttest_rel(arm, base).pvalue
    if math.isnan(p_value):  # identical differences: t is undefined
        assert rows["losses"]["p_value"] == ""
    else:
        assert float(rows["losses"]["p_value"]) == pytest.approx(p_value, rel=1e-9)
    low, high = statistics.mean(d) - half, statistics.mean(d) + half
    assert rows["losses"]["verdict"] == ("better" if low > 0 else "worse" if high < 0 else "inconclusive")
    assert rows["losses"]["pairs"] == "2" and rows["losses"]["unpaired_seeds"] == ""
    # Budget: LLM calls and tokens from the stand-in's usage (120 + 30), seconds from the runs' own clocks.
    assert float(rows["losses"]["llm_tokens"]) == 150 and float(rows["baseline"]["llm_calls"]) == 0
    # No models file, so no price: the LLM arm's cost is empty, never 0; an arm that asks no LLM costs 0.
    assert rows["losses"]["llm_cost_usd"] == "" and float(rows["baseline"]["llm_cost_usd"]) == 0
    train_s = [
        sum(m.value for m in remote.get_metric_history(r.info.run_id, "epoch_seconds"))
        for r in children
        if r.data.tags["arm"] == "baseline"
    ]
    assert float(rows["baseline"]["train_seconds"]) == pytest.approx(statistics.mean(train_s))
    assert float(rows["losses"]["llm_calls"]) == 1 and float(rows["losses"]["accepted"]) == 1
    assert float(rows["losses"]["lowest_lr"]) == 0.05 and float(rows["baseline"]["lowest_lr"]) == 0.1

    (cmp_run,) = [r for r in sweep_runs(remote, "s1") if r.data.tags.get("role") == "compare"]
    assert cmp_run.data.tags["mlflow.runName"] == "compare-s1"
    logged = {a.path for a in remote.list_artifacts(cmp_run.info.run_id)}
    assert {
        "results.md",
        "results.csv",
        "overlay_losses.png",
        "overview.png",
        "class_heatmap.png",
        "forest.png",
        "pareto.png",
        "compared_runs.json",
    } == logged

    # The same sweep again: everything is already FINISHED with these parameters, nothing new runs.
    capfd.readouterr()
    assert (
        cli(
            "sweep",
            "--arms",
            "baseline,losses",
            "--seeds",
            "0,1",
            "--sweep-id",
            "s1",
            "--parallel",
            2,
            "--data-dir",
            tiny_cifar,
            "--experiment",
            "sweeps",
            *[x for k, v in SHARED.items() for x in (f"--{k.replace('_', '-')}", v)],
        )
        == 0
    )
    assert "4 already finished" in capfd.readouterr().out
    assert len([r for r in sweep_runs(remote, "s1") if r.data.tags.get("role") == "arm"]) == 4

    # Without the baseline, the table still comes out, without the Δ column's values.
    capfd.readouterr()
    losses_ids = ",".join(r.info.run_id for r in children if r.data.tags["arm"] == "losses")
    assert cli("compare", "--run-ids", losses_ids, "--output-dir", tmp_path / "nobase") == 0
    captured = capfd.readouterr()
    assert "no finished 'baseline' run" in captured.err and "| losses | 0,1 |" in captured.out


def test_failing_arm_is_reported_while_the_others_finish(tiny_cifar, remote, capfd, monkeypatch):
    with FakeGemini([error(500)]) as g:
        point(monkeypatch, g)
        code = cli(
            "sweep",
            "--arms",
            "baseline,losses",
            "--sweep-id",
            "s2",
            "--data-dir",
            tiny_cifar,
            "--on-advisor-error",
            "fail",
            "--llm-attempts",
            1,
            "--experiment",
            "sweeps",
            *[x for k, v in SHARED.items() for x in (f"--{k.replace('_', '-')}", v)],
        )
    assert code == 1
    out = capfd.readouterr().out
    assert "sweep s2: 1 finished, 1 failed, 0 skipped" in out and "FAILED" in out
    status = {r.data.tags.get("arm", "parent"): r.info.status for r in sweep_runs(remote, "s2")}
    assert status == {"baseline": "FINISHED", "losses": "FAILED", "parent": "FAILED"}


def test_a_sweep_started_again_ends_the_runs_an_earlier_start_left_running(tiny_cifar, remote, capfd):
    """A child that died before it could end its run (its tracking server restarted under it), or a sweep killed
    outright, leaves runs RUNNING for good; the same sweep started again ends them KILLED, saying why."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("sweeps")
    exp_id = exp.experiment_id if exp else client.create_experiment("sweeps")
    left = client.create_run(exp_id, run_name="baseline-s0", tags={"sweep_id": "s3", "arm": "baseline"})
    flags = [x for k, v in SHARED.items() for x in (f"--{k.replace('_', '-')}", v)]
    argv = ["sweep", "--arms", "baseline", "--sweep-id", "s3", "--data-dir", tiny_cifar, "--experiment", "sweeps"]
    assert cli(*argv, *flags) == 0
    assert f"ended baseline-s0 ({left.info.run_id}) KILLED" in capfd.readouterr().out
    run = client.get_run(left.info.run_id)
    assert run.info.status == "KILLED" and "its sweep stopped before ending it" in run.data.tags["failure_reason"]
    assert "RUNNING" not in {r.info.status for r in sweep_runs(remote, "s3")}


def test_compare_says_when_there_is_nothing(remote, capfd, tmp_path):
    assert cli("compare", "--sweep-id", "no-such-sweep", "--output-dir", tmp_path) == 1
    assert "no finished training runs in sweep no-such-sweep" in capfd.readouterr().err


def test_registry_prompt_is_rendered_recorded_and_linked(tiny_cifar, remote, capfd, monkeypatch, tmp_path):
    assert cli("prompts", "register", "--name", "lra-test") == 0
    assert "registered prompts:/lra-test-losses/1" in capfd.readouterr().out
    registered = mlflow.genai.load_prompt("prompts:/lra-test-losses/1").template
    with FakeGemini([reply("The learning rate should be 0.05.")]) as g:
        point(monkeypatch, g)
        assert (
            cli(
                "train",
                "--arm",
                "losses",
                "--prompt",
                "prompts:/lra-test-losses/1",
                "--data-dir",
                tiny_cifar,
                "--experiment",
                "prompts",
                *[x for k, v in SHARED.items() for x in (f"--{k.replace('_', '-')}", v)],
            )
            == 0
        )
    sent = g.requests[0]["body"]["contents"][0]["parts"][0]["text"]
    assert "{{" not in sent and "- Loss values (last 1 epochs): [" in sent and sent.startswith("Based on the following")
    (run,) = remote.search_runs([remote.get_experiment_by_name("prompts").experiment_id])
    assert run.data.params["prompt"] == "prompts:/lra-test-losses/1"
    logged = open(remote.download_artifacts(run.info.run_id, "advisor/prompt_template.txt", str(tmp_path))).read()
    assert logged == registered
    assert "lra-test-losses" in run.data.tags["mlflow.linkedPrompts"]  # MLflow's own prompt-version <-> run link

    capfd.readouterr()
    assert cli("train", "--arm", "losses", "--prompt", "prompts:/no-such-prompt/1", "--data-dir", tiny_cifar) == 2
    assert "cannot load prompt 'prompts:/no-such-prompt/1'" in capfd.readouterr().err


def test_run_names_are_unique_in_an_experiment_but_a_sweep_jobs_attempts_share_theirs(tiny_cifar, remote):
    """A try-out's `baseline-s0` and a sweep's seed-0 baseline read alike in the UI's list: the later one is
    `baseline-s0 (2)`, `(3)`... A sweep job trained again after it was killed keeps its name: it is the same job."""
    flags = [x for k, v in SHARED.items() for x in (f"--{k.replace('_', '-')}", v)]
    where = ["--data-dir", tiny_cifar, "--experiment", "names"]
    for _ in range(2):
        assert cli("train", "--arm", "baseline", *where, *flags) == 0
    sweep = ["sweep", "--arms", "baseline", "--seeds", 0, "--sweep-id", "n1", *where, *flags]
    assert cli(*sweep) == 0
    (child,) = [r for r in sweep_runs(remote, "n1") if r.data.tags["role"] == "arm"]
    remote.set_terminated(child.info.run_id, "KILLED")  # as if the sweep had been stopped in it
    assert cli(*sweep) == 0
    exp_id = remote.get_experiment_by_name("names").experiment_id
    names = sorted((r.info.run_name, r.info.status) for r in remote.search_runs([exp_id]))
    assert names == [
        ("baseline-s0", "FINISHED"),
        ("baseline-s0 (2)", "FINISHED"),
        ("baseline-s0 (3)", "FINISHED"),
        ("baseline-s0 (3)", "KILLED"),
        ("sweep-n1", "FINISHED"),
        ("sweep-n1", "FINISHED"),
    ]
