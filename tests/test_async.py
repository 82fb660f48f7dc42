"""advice async / async_step: training never waits for the LLM. The reply lands where it can, each exchange records
where it was applied (or why not), a replay reproduces the run bit for bit, and Ctrl-C never waits for a reply.
Against a real OpenAI-compatible stand-in whose second reply takes a minute."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import THREE_STEPS, calls, cli, history, point, runs_of
from fake_openai import FakeOpenAI, chat

# 10 images, batch 4: three batches an epoch; five epochs
TINY = ["--epochs", 5, *THREE_STEPS]
SLOW = 60  # seconds the stand-in takes for the second reply: far beyond the run


def lr_steps(run_id):
    return [v for _, v in history(run_id, "lr_step")]


@pytest.mark.parametrize("advice", ["async", "async_step"])
def test_async_advice_never_waits_and_replays_exactly(advice, tiny_cifar, experiment, monkeypatch, capsys):
    with FakeOpenAI([chat("LR 0.05"), chat("LR 0.02", delay=SLOW)]) as s:
        point(monkeypatch, s)
        t0 = time.monotonic()
        assert (
            cli(
                "train",
                "--arm",
                "losses",
                "--advisor",
                "openai",
                "--llm-model",
                "fake-model-7b-instruct",
                "--advice",
                advice,
                "--data-dir",
                tiny_cifar,
                *TINY,
                "--experiment",
                experiment,
            )
            == 0
        )
        took = time.monotonic() - t0
    # Not a timing test: waiting for the second reply alone would take SLOW seconds.
    assert took < SLOW / 2 and len([r for r in s.requests if r["body"]]) == 2
    (run,) = runs_of(experiment)
    rows = calls(run)
    first, second = rows
    # Asked after epoch 1: training went on at the schedule's LR; the reply (there at once) lands after epoch 2
    # (async: the first epoch boundary after it arrived) or at a batch of epoch 2 (async_step).
    assert first["epoch"] == 1 and first["parsed_lr"] == 0.05 and first["accepted"]
    if advice == "async":
        assert (first["applied_epoch"], first["applied_step"]) == (3, 7)
        assert [v for _, v in history(run.info.run_id, "lr")] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05])
    else:
        at = int(first["applied_step"])
        assert first["applied_epoch"] == (at - 1) // 3 + 1 and at >= 4  # mostly in epoch 2; later on a loaded machine
        assert lr_steps(run.info.run_id) == pytest.approx([0.1] * (at - 1) + [0.05] * (16 - at))
    # One exchange in flight at a time; the next is asked at the first boundary after the reply landed, and is
    # still in flight at the end: recorded, not applied, not waited for.
    assert second["epoch"] == first["applied_epoch"] - (1 if advice == "async" else 0)
    empty = lambda v: v is None or v != v  # noqa: E731 (the table reads back None as NaN)
    assert empty(second["applied_epoch"]) and empty(second["applied_step"]) and empty(second["reply"])
    assert "still in flight when training ended after epoch 5" in second["reason"]
    assert [(s, v) for s, v in history(run.info.run_id, "advisor_proposed_lr")] == [(1, 0.05)]  # at the asking epoch
    assert run.data.metrics["llm_calls"] == 2 and run.data.metrics["llm_failed_calls"] == 0
    out = capsys.readouterr().out
    assert f"is still in flight; not asking after epoch {second['epoch'] + 1}" in out

    # A replay applies each reply exactly where the live run did: the same LRs and the same weights.
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "replay",
            "--replay-run-id",
            run.info.run_id,
            "--advice",
            advice,
            "--data-dir",
            tiny_cifar,
            *TINY,
            "--experiment",
            experiment,
        )
        == 0
    )
    replay = next(r for r in runs_of(experiment) if r.info.run_id != run.info.run_id)
    assert replay.data.tags["weights_sha256"] == run.data.tags["weights_sha256"]
    assert [(r["epoch"], r["applied_step"]) for r in calls(replay)][:1] == [(1, first["applied_step"])]
    # ... and only under the same advice.
    capsys.readouterr()
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "replay",
            "--replay-run-id",
            run.info.run_id,
            "--data-dir",
            tiny_cifar,
            *TINY,
            "--experiment",
            experiment,
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"was trained with advice {advice}: replay it with --advice {advice}" in err[0]


def test_ctrl_c_with_a_request_in_flight_ends_the_run_killed_at_once(tiny_cifar, experiment):
    """... and keeps what was spent: the exchange that was answered is counted in the budget of the KILLED run."""
    with FakeOpenAI([chat("LR 0.02"), chat("LR 0.02", delay=SLOW)]) as s:
        env = {**os.environ, **s.env(), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lradvisor",
                "train",
                "--arm",
                "losses",
                "--advisor",
                "openai",
                "--llm-model",
                "m",
                "--advice",
                "async",
                "--data-dir",
                tiny_cifar,
                "--epochs",
                "200",
                "--batch-size",
                "4",
                "--experiment",
                experiment,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            for _ in range(600):  # until the second request is on its way
                if sum(bool(r["body"]) for r in s.requests) == 2 or proc.poll() is not None:
                    break
                time.sleep(0.1)
            assert sum(bool(r["body"]) for r in s.requests) == 2, proc.stdout.read()[-2000:]
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=SLOW / 2) == 130
            assert time.monotonic() - t0 < SLOW / 2
        finally:
            proc.kill()
    (run,) = runs_of(experiment)
    assert run.info.status == "KILLED" and "interrupt" in run.data.tags["failure_reason"]
    assert run.data.metrics["llm_calls"] == 1 and run.data.metrics["llm_tokens"] > 0


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--advice", "later"], "unknown advice 'later'; valid: sync, async, async_step"),
        (
            ["--advice", "async_step", "--guard", "rollback"],
            "guard rollback retrains an epoch from its start: it needs advice sync or async, not async_step",
        ),
        (["--advice", "async_step", "--credit-epochs", "1"], "credit_epochs branches from an epoch's start"),
    ],
)
def test_what_async_step_cannot_do_is_refused_before_any_run(flags, says, tiny_cifar, experiment, capsys):
    assert cli("train", "--arm", "losses", *flags, "--data-dir", tiny_cifar, *TINY, "--experiment", experiment) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert runs_of(experiment) == []


def test_async_decisions_get_credit_and_credit_changes_nothing(tiny_cifar, experiment):
    """Under async a decision's branch starts where its reply landed; the run trains bit for bit as with credit
    off (the random control answers at once, without a network: it lands deterministically)."""
    for credit in (1, 0):
        assert (
            cli(
                "train",
                "--arm",
                "random_control",
                "--advice",
                "async",
                "--credit-epochs",
                credit,
                "--data-dir",
                tiny_cifar,
                *TINY,
                "--experiment",
                experiment,
            )
            == 0
        )
    on, off = sorted(runs_of(experiment), key=lambda r: r.info.start_time)
    assert on.data.tags["weights_sha256"] == off.data.tags["weights_sha256"]
    rows = calls(on)
    assert [(r["epoch"], r["applied_epoch"]) for r in rows] == [(1, 3), (2, 4), (3, 5)]
    assert all(r["credit_epochs"] == 1 and r["credit_acc"] == r["credit_acc"] for r in rows if r["changed"])
    assert sorted(s for s, _ in history(on.info.run_id, "credit_acc")) == [r["epoch"] for r in rows if r["changed"]]


def test_async_guard_rolls_back_the_epoch_a_reply_blew_up(tiny_cifar, experiment, monkeypatch):
    with FakeOpenAI([chat("The learning rate should be 0.9.")]) as s:
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
                "--advice",
                "async",
                "--guard",
                "rollback",
                "--guard-factor",
                1.01,
                "--lr",
                0.01,
                "--momentum",
                0.99,
                "--data-dir",
                tiny_cifar,
                *TINY,
                "--experiment",
                experiment,
            )
            == 0
        )
    (run,) = runs_of(experiment)
    rollbacks = [s for s, _ in history(run.info.run_id, "advisor_rollback")]
    assert rollbacks, "the 0.9 reply should have blown the loss past 1.01 x the previous epoch"
    rows = calls(run)
    applied = {r["applied_epoch"]: r["epoch"] for r in rows if r["model"] != "guard"}
    notes = [r for r in rows if r["model"] == "guard"]
    # each note sits under the exchange whose reply set the rolled-back epoch, and that epoch kept the schedule's LR
    assert [n["epoch"] for n in notes] == [applied[e] for e in rollbacks]
    lrs = dict(history(run.info.run_id, "lr"))
    assert all(lrs[e] == pytest.approx(0.01) for e in rollbacks)
