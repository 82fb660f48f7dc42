"""The decision benchmark through the CLI: a build that is killed and resumes measuring no state twice, its records,
states that render byte for byte the prompts a training run sent, scorings whose regrets are what the outcome table
says, two scorings paired by state, and the oracle arm on whole runs."""

import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys

import mlflow
import pytest

from conftest import ROOT, cli, history
from fake_openai import FakeOpenAI, chat

EXPERIMENT = "decisions"
# 10 synthetic images a class (6 train, 4 validation), batch 10: 6 steps an epoch at lr 0.01, where it learns to
# 40-60 % in 3 epochs; StepLR cuts every 2. Width 16: a quarter of ResNet-18's channels, ~8x faster here.
DATA = [
    "--dataset",
    "cifar10",
    "--width",
    16,
    "--lr",
    0.01,
    "--batch-size",
    10,
    "--epochs",
    3,
    "--step-size",
    2,
    "--holdout",
    0.4,
    "--precision",
    "fp32",
    "--channels-last",
    0,
]
BUILD = [
    "decisions",
    "build",
    "--decisions-id",
    "t",
    "--seeds",
    0,
    "--grid",
    "0.1,1,10",
    "--replicates",
    2,
    "--from-arms",
    "random_control",
    *DATA,
]


def table(run_id, path):
    t = mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    return [dict(zip(t["columns"], row)) for row in t["data"]]


def runs(role, **tags):
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    flt = " and ".join([f"tags.role = '{role}'"] + [f"tags.{k} = '{v}'" for k, v in tags.items()])
    return client.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tracking_uri):
    """A build killed after its first state, then the same command again: (its console before and after)."""
    folder = tmp_path_factory.mktemp("decisions")
    data = folder / "data"
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
    argv = [*BUILD, "--data-dir", data, "--experiment", EXPERIMENT]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lradvisor", *map(str, argv)],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    before = []
    for line in proc.stdout:
        before.append(line)
        if line.strip().startswith("measured"):
            proc.send_signal(signal.SIGINT)
            break
    before += proc.stdout.readlines()
    assert proc.wait(timeout=120) == 130, "".join(before)
    again = io.StringIO()
    with contextlib.redirect_stdout(again):
        code = cli(*argv)
    return {"data": data, "before": "".join(before), "after": code, "again": again.getvalue()}


def test_a_killed_build_resumes_and_measures_no_state_twice(bench):
    assert bench["after"] == 0
    (parent,) = runs("decisions")
    states = json.loads(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/decisions/states.json"))
    # baseline after epochs 1 and 2; the random control's trajectory from its first decision on (at epoch 1 it is
    # the baseline's state: the first epoch trains the same whatever the arm)
    assert sorted(states) == ["baseline-s0-e1", "baseline-s0-e2", "random_control-s0-e2"]
    measured = [
        line.split()[1].rstrip(":") for line in bench["before"].splitlines() if line.strip().startswith("measured")
    ]
    assert measured == ["baseline-s0-e1"], bench["before"]  # killed after its first state
    trajectories = runs("trajectory")
    assert [r.info.status for r in trajectories] == ["KILLED", "FINISHED", "FINISHED"]
    again = [
        s for r in trajectories[1:] for s in [row["state"] for row in table(r.info.run_id, "decisions/outcomes.json")]
    ]
    assert sorted(set(again)) == sorted(states) and parent.info.status == "FINISHED"
    assert "baseline seed 0: 1 state(s) measured before, not again" in bench["again"]
    assert [line.split()[1] for line in bench["again"].splitlines() if line.strip().startswith("measured")] == [
        "baseline-s0-e2:",
        "random_control-s0-e2:",
    ]


def test_the_outcomes_states_and_evaluation_dataset_are_recorded(bench):
    (parent,) = runs("decisions")
    rows = table(parent.info.run_id, "decisions/outcomes.json")
    assert {"state", "multiplier", "lr", "replicate", "val_acc", "val_loss", "test_acc", "test_loss"} <= set(rows[0])
    assert len(rows) == 3 * 3 * 2  # states x actions x replicates
    for r in rows:  # every action's LR is its multiple of the state's scheduler LR
        same_state = [x for x in rows if x["state"] == r["state"] and x["multiplier"] == 1.0]
        assert r["lr"] == pytest.approx(r["multiplier"] * same_state[0]["lr"])
    assert parent.data.params["grid"] == "0.1,1,10" and parent.data.metrics["states"] == 3
    import mlflow.genai.datasets

    dataset = mlflow.genai.datasets.get_dataset(name="decisions-t")
    records = dataset.to_df()
    assert len(records) == 3 and set(records["expectations"].iloc[0]["outcomes"]) == {"0.1", "1", "10"}


def test_states_render_the_prompts_a_training_run_sent(bench, capsys):
    """A state renders, for the trajectory's own arm, the bytes its run sent at that epoch; and, for every signal a
    published arm shows, the bytes a run of those signals sent (a replay of the trajectory: it trains the same)."""
    from lradvisor.arms import resolve
    from lradvisor.config import TrainConfig
    from lradvisor.llm.advisor import Advisor

    (parent,) = runs("decisions")
    states = json.loads(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/decisions/states.json"))
    control = runs("trajectory", arm="random_control")[-1]
    signals = "losses,lr_history,grad_norms,per_class,feedback"
    assert (
        cli(
            "train",
            "--arm",
            "per_class",
            "--signals",
            signals,
            "--advisor",
            "replay",
            "--replay-run-id",
            control.info.run_id,
            *DATA,
            "--data-dir",
            bench["data"],
            "--experiment",
            "decisions-replay",
        )
        == 0
    )
    replay = mlflow.search_runs(experiment_names=["decisions-replay"], output_format="list")[0]
    base = TrainConfig(dataset="cifar10", lr=0.01, batch_size=10, epochs=3, step_size=2, holdout=0.4)  # the build's
    for run, arm, extra in ((control, "random_control", {}), (replay, "per_class", {"signals": signals})):
        c = dataclasses.replace(base, arm=arm, advisor="random", **extra)  # who answers does not change the prompt
        advisor = Advisor(c, resolve(arm, c.signals, c.every, c.advisor, c.schedule))
        for epoch, state in ((1, "baseline-s0-e1"), (2, "random_control-s0-e2")):
            v = states[state]
            text, _ = advisor.question(epoch, v["history"], v["scheduler_lr"])
            sent = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/advisor/epoch_{epoch:02d}/prompt.txt")
            assert text == sent, (arm, epoch)


def score(arm, *flags):
    assert cli("decisions", "score", "--decisions-id", "t", "--arm", arm, *flags) == 0
    run = runs("score", arm=arm)[-1]
    return run, table(run.info.run_id, "decisions/scores.json")


def by_hand(rows, state, m):
    """A state's outcome of multiplier m from the outcome table: replicates averaged, log-linear between neighbours."""
    means = {
        g: statistics.mean(r["val_acc"] for r in rows if r["state"] == state and r["multiplier"] == g)
        for g in (0.1, 1.0, 10.0)
    }
    lo, hi = (0.1, 1.0) if m <= 1 else (1.0, 10.0)
    w = (math.log10(min(max(m, 0.1), 10)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    value = means[lo] * (1 - w) + means[hi] * w
    return max(means.values()) - value, value - means[1.0]


@pytest.mark.parametrize(
    "arm, reply",
    [
        ("baseline", None),
        ("random_control", None),
        ("textbook_control", None),
        ("oracle", None),
        ("losses", "The learning rate should be 0.003."),
    ],
)
def test_scores_are_the_regrets_the_outcome_table_gives(arm, reply, bench, monkeypatch):
    (parent,) = runs("decisions")
    rows = table(parent.info.run_id, "decisions/outcomes.json")
    with contextlib.ExitStack() as stack:
        flags = []
        if reply:
            server = stack.enter_context(FakeOpenAI([chat(reply)]))
            monkeypatch.setenv("OPENAI_BASE_URL", server.env()["OPENAI_BASE_URL"])
            flags = ["--advisor", "openai", "--llm-model", "fake-model-7b-instruct"]
        run, scores = score(arm, *flags)
    assert len(scores) == 3
    for s in scores:
        m = s["applied_lr"] / s["scheduler_lr"]
        regret, gain = by_hand(rows, s["state"], m)
        assert (s["regret"], s["gain"]) == (pytest.approx(regret), pytest.approx(gain)), s
        if arm == "baseline":
            assert m == 1
        if arm == "oracle":
            assert s["regret"] == 0
        if reply:
            assert s["applied_lr"] == pytest.approx(0.003) and s["accepted"]
    metrics = run.data.metrics
    assert metrics["regret_mean"] == pytest.approx(statistics.mean(s["regret"] for s in scores))
    assert metrics["regret/mean"] == pytest.approx(metrics["regret_mean"])  # MLflow's own scorer says the same
    spread = {}  # the noise floor: the replicates' standard deviation, per action, averaged per state, then over states
    for r in rows:
        spread.setdefault(r["state"], {}).setdefault(r["multiplier"], []).append(r["val_acc"])
    floor = statistics.mean(statistics.mean(map(statistics.pstdev, a.values())) for a in spread.values())
    assert metrics["noise_floor"] == pytest.approx(floor)
    traces = mlflow.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id, return_type="list")
    assert len(traces) == 3 and {a.name for a in traces[0].info.assessments} >= {"regret", "gain", "accepted"}


def test_two_scorings_compare_paired_by_state(bench, capsys):
    random_run, _ = score("random_control")
    run, scores = score("textbook_control", "--against", random_run.info.run_id)
    theirs = {s["state"]: s["regret"] for s in table(random_run.info.run_id, "decisions/scores.json")}
    delta = statistics.mean(s["regret"] - theirs[s["state"]] for s in scores)
    assert run.data.metrics["delta_regret"] == pytest.approx(delta) and run.data.metrics["paired_states"] == 3
    assert f"against {random_run.info.run_id}: Δ regret {delta:+.2f}" in capsys.readouterr().out


def test_the_oracle_arm_applies_the_best_action_on_whole_runs(bench, experiment):
    assert cli("train", "--arm", "oracle", *DATA, "--data-dir", bench["data"], "--experiment", experiment) == 0
    (run,) = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    rows = table(run.info.run_id, "oracle/branches.json")
    lrs = dict(history(run.info.run_id, "lr"))
    for epoch in (1, 2):
        tried = [r for r in rows if r["epoch"] == epoch]
        best = max(tried, key=lambda r: (r["val_acc"], -r["val_loss"]))
        assert [r["chosen"] for r in tried] == [r is best for r in tried]
        assert lrs[epoch + 1] == pytest.approx(best["lr"])  # applied from the next epoch
    assert run.data.metrics["oracle_seconds"] > 0 and run.data.params["oracle.grid"] == "0.1,0.3,1,3,10"
    assert run.data.params["oracle.horizon"] == "1"


def test_a_resume_ends_the_trajectory_runs_a_build_killed_outright_left_running(bench):
    """kill -9 leaves a trajectory's run RUNNING (nothing in the process runs); the next build of the id ends it
    KILLED, saying why, and reuses what it measured: no run is left RUNNING, nothing is measured again."""
    client = mlflow.MlflowClient()
    (parent,) = runs("decisions")
    states = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/decisions/states.json")
    tags = {"mlflow.parentRunId": parent.info.run_id, "decisions_id": "t", "role": "trajectory", "arm": "baseline"}
    left = client.create_run(parent.info.experiment_id, run_name="baseline-s0", tags={**tags, "seed": "0"})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(*BUILD, "--data-dir", bench["data"], "--experiment", EXPERIMENT) == 0
    assert "0 trajectories to measure" in out.getvalue() and "measured " not in out.getvalue()
    run = client.get_run(left.info.run_id)
    assert run.info.status == "KILLED" and "its build stopped before ending it" in run.data.tags["failure_reason"]
    assert [r.info.status for r in runs("decisions")] == ["FINISHED"]
    assert "RUNNING" not in {r.info.status for r in runs("trajectory")}
    assert mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/decisions/states.json") == states


def test_the_short_horizon_bias_script_compares_best_actions_state_by_state(bench):
    """scripts/horizon_bias.py against a `--horizon end` build from the same trajectory: for every shared state its
    best action at each horizon and the end regret of the k=1 choice are what the two outcome tables say."""
    end = ["--decisions-id", "t-end", "--horizon", "end", "--replicates", 1, "--experiment", "decisions-end"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        build = ["decisions", "build", "--seeds", 0, "--grid", "0.1,1,10", *DATA, "--data-dir", bench["data"]]
        assert cli(*build, *end) == 0
    # one replicate measures no spread: the noise floor is said to be unmeasured, not 0
    assert "noise floor (replicate spread) unmeasured (1 replicate)" in out.getvalue()
    (end_run,) = mlflow.search_runs(
        experiment_names=["decisions-end"], filter_string="tags.role = 'decisions'", output_format="list"
    )
    assert "noise_floor" not in end_run.data.metrics and "headroom_mean" in end_run.data.metrics
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "horizon_bias.py"), "t", "t-end"],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()},
    )
    assert p.returncode == 0, p.stderr

    def means(decisions_id):
        client = mlflow.MlflowClient()
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        (run,) = client.search_runs(exp_ids, f"tags.decisions_id = '{decisions_id}' and tags.role = 'decisions'")
        by = {}
        for r in table(run.info.run_id, "decisions/outcomes.json"):
            by.setdefault(r["state"], {}).setdefault(r["multiplier"], []).append(r["val_acc"])
        return {s: {m: statistics.mean(v) for m, v in acts.items()} for s, acts in by.items()}

    short, final = means("t"), means("t-end")
    shared = sorted(set(short) & set(final))
    assert len(shared) == 2 and len(short) > len(final)  # the baseline's 2 states; random_control's only in "t"
    differ = 0
    for s in shared:
        top_short, top_end = max(short[s].values()), max(final[s].values())
        choice = min((m for m, v in short[s].items() if v == top_short), key=lambda m: abs(math.log(m)))
        at_end = sorted(m for m, v in final[s].items() if v == top_end)
        differ += choice not in at_end
        row = f"| {s} | ×{choice:g} | {', '.join(f'×{m:g}' for m in at_end)} | {top_end - final[s][choice]:.2f} |"
        assert row in p.stdout, p.stdout
    assert f"not among the best at the end in {differ} of 2 states" in p.stdout


@pytest.mark.parametrize("arm", ["cosine", "onecycle"])
def test_a_schedule_scores_the_lr_a_training_run_of_it_sets(arm, bench, experiment):
    """A per-step schedule's LR at a state depends on the steps an epoch has (the trajectories' n_train): the score
    applies what `train --arm <schedule>` of the same settings sets at that epoch."""
    assert cli("train", "--arm", arm, *DATA, "--data-dir", bench["data"], "--experiment", experiment) == 0
    (trained,) = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    lrs = dict(history(trained.info.run_id, "lr"))
    _, scores = score(arm)
    assert len(scores) == 3
    for s in scores:
        assert s["applied_lr"] == pytest.approx(lrs[s["epoch"] + 1]), s
    assert len({s["applied_lr"] for s in scores}) > 1  # it moved: not the first epoch's LR throughout
