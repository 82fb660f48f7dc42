"""Classical controllers at the LLM's budget (`lradvisor search`), through the CLI against a real `mlflow server`:
an LLM sweep (a stand-in Gemini) sets the budget, an Optuna TPE search is interrupted with Ctrl-C and resumed, its
winner is trained on the sweep's seeds and compared with them; PBT runs on a real local Ray head."""

import csv
import json
import os
import signal
import subprocess
import sys

import mlflow
import pytest

from conftest import cli, history, point
from fake_gemini import FakeGemini, reply

# Digits, 10 % of it (143 images: 130 train, 13 validation), at width 16 (a quarter of ResNet-18's channels): the TPE
# test took 71 s here instead of 142 at width 64, PBT's 39 instead of 68 (2026-12-03).
DIGITS = ["--dataset", "digits", "--lr", "0.02", "--batch-size", "16", "--subset-ratio", "0.1", "--epochs", "2"]
DIGITS += ["--width", "16"]


def search_runs(client, search_id):
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exp_ids, f"tags.search_id = '{search_id}'")


def start(*flags, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "lradvisor", "search", *map(str, flags)],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})},
    )


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--budget-epochs", 4, "--budget-from", "sweep_id=x"], "give the budget one way"),
        ([], "give the budget one way"),
        (["--budget-epochs", 1], "a budget of 1 epochs cannot pay for one trial of 2 epochs"),
        (["--budget-epochs", 7, "--method", "pbt"], "cannot pay for 4 members x 2 epochs"),
        (["--budget-epochs", 8, "--holdout", 0], "holdout must be in (0, 0.5)"),
        (["--budget-epochs", 8, "--seeds", "0,1000"], "seeds must lie in [0, 1000)"),
        (["--budget-epochs", 8, "--method", "grid"], "valid: tpe, random, pbt"),
        (["--budget-from", "sweep_id=nosuch"], "sweep 'nosuch' has no finished LLM-arm runs"),
    ],
)
def test_bad_search_input_is_one_line_and_no_run(flags, says, experiment, capsys):
    assert cli("search", *DIGITS, "--experiment", experiment, *flags) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is None or not mlflow.search_runs([exp.experiment_id], output_format="list")


def test_search_arms_and_schedule_files_are_checked_before_any_run(tmp_path, capsys):
    assert cli("train", "--arm", "search_tpe") == 2
    assert "trained by `lradvisor search --method tpe`" in capsys.readouterr().err
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"lr": [0.1, -1]}))
    assert cli("train", "--schedule-file", bad) == 2
    assert "'lr' must be a non-empty list of positive numbers" in capsys.readouterr().err
    bad.write_text(json.dumps({"lr": [0.1]}))
    assert cli("train", "--schedule-file", bad, "--epochs", 2) == 2
    assert "has 1 LRs for 2 epochs" in capsys.readouterr().err
    assert cli("train", "--schedule-file", bad, "--epochs", 1, "--arm", "losses") == 2
    assert "does not take an advisor" in capsys.readouterr().err


def test_tpe_at_the_llm_budget_resumes_after_ctrl_c_and_is_compared(remote, tmp_path, capsys, monkeypatch):  # noqa: F811
    # The LLM sweep the search is charged against: losses x seeds 0,1 x 2 epochs = 4 epochs of LLM arms.
    with FakeGemini([reply("The learning rate should be 0.01.")]) as g, monkeypatch.context() as m:
        point(m, g)
        assert (
            cli(
                "sweep",
                "--arms",
                "baseline,losses",
                "--seeds",
                "0,1",
                "--sweep-id",
                "llm",
                "--holdout",
                "0.1",
                "--parallel",
                2,
                *DIGITS,
                "--experiment",
                "search",
            )
            == 0
        )
    storage = f"sqlite:///{tmp_path}/optuna.db"
    flags = [
        "--method",
        "tpe",
        "--budget-from",
        "sweep_id=llm",
        "--search-id",
        "t1",
        "--seeds",
        "0,1",
        "--storage",
        storage,
        *DIGITS,
        "--experiment",
        "search",
    ]

    proc = start(*flags)  # Ctrl-C in the first trial's first epoch
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch   1/2" in line:
            proc.send_signal(signal.SIGINT)
            break
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    runs = search_runs(remote, "t1")
    assert runs and all(r.info.status == "KILLED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]

    assert cli("search", *flags) == 0  # the same command again: the study goes on
    out = capsys.readouterr().out
    assert "search t1: resuming" in out and "budget 4 epochs, what the 2 LLM-arm runs of sweep_id=llm trained" in out
    runs = search_runs(remote, "t1")
    (parent,) = [r for r in runs if r.data.tags["role"] == "search"]
    trials = [r for r in runs if r.data.tags["role"] == "trial"]
    winners = [r for r in runs if r.data.tags["role"] == "arm"]
    assert parent.info.status == "FINISHED" and parent.data.tags["mlflow.runName"] == "search-t1"
    used = parent.data.metrics["budget_used"]
    assert parent.data.metrics["budget_allowed"] == 4 and 2 <= used <= 4
    # Every epoch any trial trained is charged, the interrupted one's included.
    assert used == sum(len(history(r.info.run_id, "train_loss")) for r in trials)
    assert (
        sorted(r.info.status for r in trials)[-1] == "KILLED" and sum(r.info.status == "FINISHED" for r in trials) >= 1
    )
    for r in trials:  # ordinary runs on seeds the winners never use, judged on their validation split
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.data.tags["method"] == "tpe"
        assert int(r.data.params["seed"]) >= 1000 and r.data.params["holdout"] == "0.1"
        assert r.data.tags["decisions_saw_test"] == "0"
    import optuna

    study = optuna.load_study(study_name="search-t1", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL" and "COMPLETE" in states and len(study.trials) == len(trials)
    best = study.best_trial
    assert parent.data.tags["best.lr"] == str(best.params["lr"])
    assert {a.path for a in remote.list_artifacts(parent.info.run_id, "optuna")} >= {
        "optuna/optimization_history.png",
        "optuna/trials.csv",
    }

    assert sorted(r.data.params["seed"] for r in winners) == ["0", "1"]
    for r in winners:  # the best trial's configuration, trained again on the sweep's seeds
        assert r.info.status == "FINISHED" and r.data.tags["arm"] == "search_tpe"
        assert float(r.data.params["lr"]) == best.params["lr"] and r.data.params["schedule"] == best.params["schedule"]
        assert r.data.metrics["search_epochs"] == used

    out_dir = tmp_path / "cmp"
    assert cli("compare", "--experiment", "search", "--output-dir", out_dir) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(out_dir / "results.csv"))}
    assert set(rows) == {"baseline", "losses", "search_tpe"}  # trials are not rows
    row = rows["search_tpe"]
    assert row["baseline"] == "baseline" and row["pairs"] == "2" and row["p_value"] and row["delta_ci_low"]
    assert float(row["search_epochs"]) == used and rows["losses"]["search_epochs"] == ""
    assert "| search_tpe | 0,1 |" in open(out_dir / "results.md").read()


def test_pbt_on_a_ray_head_replays_its_winner(remote, ray_head, capsys):  # noqa: F811
    proc = start(
        "--method",
        "pbt",
        "--population",
        4,
        "--perturb-every",
        1,
        "--budget-epochs",
        8,
        "--seeds",
        "0",
        "--search-id",
        "p1",
        "--ray-address",
        ray_head,
        *DIGITS,
        "--experiment",
        "pbt",
    )
    out = proc.communicate(timeout=400)[0]
    runs = search_runs(remote, "p1")
    members = [r for r in runs if r.data.tags["role"] == "member"]
    said = "\n".join(  # each member's records, for a failure's message
        f"{r.data.tags['trial']} {r.info.status} lr {history(r.info.run_id, 'lr')} "
        + " ".join(f"{k}={r.data.tags[k]}" for k in ("pbt_cloned", "pbt_count_differs") if k in r.data.tags)
        for r in members
    )
    assert proc.returncode == 0, out[-3000:] + "\n" + said
    (parent,) = [r for r in runs if r.data.tags["role"] == "search"]
    (winner,) = [r for r in runs if r.data.tags["role"] == "arm"]
    assert (
        parent.info.status == "FINISHED"
        and parent.data.metrics["budget_used"] == 8 <= parent.data.metrics["budget_allowed"]
    )
    assert len(members) == 4 and all(r.info.status == "FINISHED" for r in members), said
    starts = sorted(history(r.info.run_id, "lr")[0][1] for r in members)  # log-even over [lr/10, 10 lr]
    assert starts == pytest.approx([0.02 * 10 ** (-1 + 2 * (i + 0.5) / 4) for i in range(4)])
    for r in members:
        assert [s for s, _ in history(r.info.run_id, "val_acc")] == [1, 2], said
        assert r.data.params["schedule"] == "constant"
    # The schedule Ray Tune's replay read from the best member's policy, followed epoch by epoch by the winner.
    path = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="pbt/schedule.json")
    schedule = json.load(open(path))["lr"]
    assert len(schedule) == 2 and any(schedule[0] == pytest.approx(x) for x in starts)
    best = next(r for r in members if r.data.tags["trial"] == parent.data.tags["best.member"])
    assert history(best.info.run_id, "lr")[-1][1] == pytest.approx(schedule[-1])  # its last epoch is its own
    assert [v for _, v in history(winner.info.run_id, "lr")] == pytest.approx(schedule)
    assert winner.data.tags["arm"] == "search_pbt" and winner.data.params["arm.schedule"] == "file"
    assert winner.data.params["seed"] == "0" and winner.data.metrics["search_epochs"] == 8
    assert any(a.path.endswith(".json") for a in remote.list_artifacts(winner.info.run_id))  # the file it followed


def test_a_trial_that_trained_all_its_epochs_is_complete_not_pruned(experiment):
    """Optuna's median pruner judges a 1-epoch trial after its only, last, epoch: one below the median there had spent
    its whole budget, so it is complete and may win (it used to be tagged stopped_early and told PRUNED)."""
    flags = ["--method", "random", "--pruner", "median", "--budget-epochs", 6, "--seeds", 0, "--epochs", 1]
    assert cli("search", *DIGITS, *flags, "--search-id", "prune", "--experiment", experiment) == 0
    client = mlflow.MlflowClient()
    trials = [r for r in search_runs(client, "prune") if r.data.tags.get("role") == "trial"]
    assert len(trials) == 6 and all("stopped_early" not in r.data.tags for r in trials)
    (parent,) = [r for r in search_runs(client, "prune") if r.data.tags.get("role") == "search"]
    table = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/optuna/trials.csv")
    assert [row["state"] for row in csv.DictReader(table.splitlines())] == ["COMPLETE"] * 6
