"""The LLM arms through the real google-genai client, against a fake Gemini server on 127.0.0.1."""

import glob
import html
import json
import os
import re

import mlflow
import pytest

from lradvisor.llm import prompt

from conftest import ONE_STEP, calls, cli, history, mlflow_run, point, runs_of, store_holds
from fake_gemini import KEY, PUBLISHED_REPLY, FakeGemini, error, reply


def lrs(run_id):
    return [v for _, v in history(run_id, "lr")]


def asked_epochs(run_id):
    return sorted(a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "advisor") if a.is_dir)


def train(experiment, arm, *flags):
    return cli("train", "--arm", arm, *flags, *ONE_STEP, "--experiment", experiment)


@pytest.fixture
def gemini(monkeypatch):
    """Start a fake Gemini with a script; the in-process CLI's SDK is pointed at it."""
    servers = []

    def start(*script):
        g = FakeGemini(script).__enter__()
        servers.append(g)
        point(monkeypatch, g)
        return g

    yield start
    for g in servers:
        g.__exit__()


def test_losses_arm_published_exchange_via_mlflow_run(tiny_cifar, experiment, tmp_path, capfd):
    """The published exchange: reply '... **0.01**' is parsed and applied; everything is inspectable; the
    key is nowhere in what MLflow stored or printed."""
    with FakeGemini([reply(PUBLISHED_REPLY, version="gemini-3.5-flash-001")]) as g:
        p = mlflow_run(
            experiment,
            env=g.env(),
            arm="losses",
            data_dir=tiny_cifar,
            epochs=3,
            batch_size=20,
            subset_ratio=0.25,
            lr=0.2,
        )
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = runs_of(experiment)
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    assert len(g.requests) == 2 and all(r["key"] == KEY for r in g.requests)  # none after the final epoch
    assert all(r["path"] == "/v1/models/gemini-3.5-flash:generateContent" for r in g.requests)
    assert lrs(rid) == [0.2, 0.01, 0.01]
    assert asked_epochs(rid) == ["advisor/epoch_01", "advisor/epoch_02"]

    # The prompt is the published one, with this run's own numbers, exactly as sent.
    client = mlflow.MlflowClient()
    sent = g.requests[0]["body"]["contents"][0]["parts"][0]["text"]
    logged = open(client.download_artifacts(rid, "advisor/epoch_01/prompt.txt", str(tmp_path))).read()
    loss1 = history(rid, "train_loss")[0][1]
    assert (
        logged
        == sent
        == (
            f"{prompt.HEAD}\n\n- Current Learning Rate: 0.2\n- Loss values (last 1 epochs): [{loss1}]\n"
            "- Overall trend of losses: unchanged or fluctuating\n- Recent trend (last 1 epochs): stable\n\n"
            + prompt.TAIL
        )
    )
    assert open(client.download_artifacts(rid, "advisor/epoch_02/reply.txt", str(tmp_path))).read() == PUBLISHED_REPLY
    # The same exchange as a page the UI previews wrapped (it cuts .txt previews at its width), exact once unescaped.
    page = open(client.download_artifacts(rid, "advisor/epoch_01/exchange.html", str(tmp_path))).read()
    assert [html.unescape(p) for p in re.findall(r"<pre>(.*?)</pre>", page, re.S)] == [sent, PUBLISHED_REPLY]
    assert "epoch 1: parsed 0.01, next lr 0.01 (accepted)" in page

    rows = calls(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    # The decision first, so the UI's table shows it without scrolling; the long texts last.
    assert list(rows[0])[:9] == [
        "epoch",
        "applied_epoch",
        "applied_step",
        "parsed_lr",
        "scheduler_lr",
        "applied_lr",
        "accepted",
        "changed",
        "reason",
    ]
    # advice sync: each decision applies from the next epoch's first batch (one batch an epoch here)
    assert [(r["applied_epoch"], r["applied_step"]) for r in rows] == [(2, 2), (3, 3)]
    assert list(rows[0])[-2:] == ["prompt", "reply"]
    assert rows[0]["parsed_lr"] == 0.01 and rows[0]["scheduler_lr"] == 0.2 and rows[0]["applied_lr"] == 0.01
    assert rows[0]["accepted"] and rows[0]["model_version"] == "gemini-3.5-flash-001"
    assert rows[0]["prompt_tokens"] == 120 and rows[0]["output_tokens"] == 30 and rows[0]["finish_reason"] == "STOP"
    assert [v for _, v in history(rid, "advisor_proposed_lr")] == [0.01, 0.01]
    assert [s for s, _ in history(rid, "advisor_accepted")] == [1, 2]
    assert run.data.params["arm.signals"] == "losses" and run.data.params["arm.every"] == "1"

    traces = mlflow.search_traces(locations=[run.info.experiment_id], run_id=rid, return_type="list")
    assert len(traces) == 2
    spans = sorted((t.data.spans[0] for t in traces), key=lambda s: s.name)
    assert [s.name for s in spans] == ["losses s0 epoch 1", "losses s0 epoch 2"]
    assert spans[0].outputs["parsed_lr"] == 0.01 and spans[0].outputs["applied_lr"] == 0.01
    assert spans[0].outputs["accepted"] is True and spans[0].outputs["reason"] == "accepted"
    exp = mlflow.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    # The key: not in params, tags, artifacts, traces (all in the store's files), nor on the console.
    artifacts = client.download_artifacts(rid, "", str(tmp_path / "all"))
    files = glob.glob(os.path.join(artifacts, "**", "*"), recursive=True)
    leaked = [f for f in files if os.path.isfile(f) and KEY.encode() in open(f, "rb").read()]
    assert store_holds(rid) and not store_holds(KEY)  # it sees the run; it does not see the key
    assert leaked == [] and KEY not in p.stdout + p.stderr
    assert KEY not in json.dumps([t.to_dict() for t in traces]) and KEY not in str(run.data)


def test_first_epoch_is_the_same_whatever_the_arm(tiny_cifar, experiment, gemini):
    gemini(reply("Use a learning rate of 0.05."))
    assert train(experiment, "baseline", "--data-dir", tiny_cifar, "--epochs", 1) == 0
    assert train(experiment, "per_class", "--data-dir", tiny_cifar, "--epochs", 2) == 0
    base, llm = sorted(runs_of(experiment), key=lambda r: r.info.start_time)
    for key in ("train_loss", "grad_norm", "test_acc", "class_acc/cat"):
        assert history(base.info.run_id, key)[0] == history(llm.info.run_id, key)[0]
    assert lrs(llm.info.run_id) == [0.1, 0.05]


@pytest.mark.parametrize(
    "arm, lines",
    [
        ("lr_history", ["- Learning rate history (per-epoch, last 2 epochs): [0.1, 0.1]"]),
        ("grad_norms", ["- Gradient norms (per-epoch mean, last 2 epochs): [", "- Overall trend of gradient norms: "]),
        ("per_class", ["- Per-class test accuracy: plane: ", "%, car: ", "- Worst three classes: "]),
    ],
)
def test_signal_arms_add_their_lines(arm, lines, tiny_cifar, experiment, gemini):
    g = gemini(reply("I would keep the learning rate where it is for now."))
    assert train(experiment, arm, "--data-dir", tiny_cifar, "--epochs", 3) == 0
    sent = g.requests[-1]["body"]["contents"][0]["parts"][0]["text"]
    assert "- Loss values (last 2 epochs): [" in sent
    for line in lines:
        assert line in sent
    (run,) = runs_of(experiment)
    assert [r["reason"] for r in calls(run)] == ["no number after 'learning rate'/'LR'"] * 2
    assert lrs(run.info.run_id) == [0.1, 0.1, 0.1]


def test_cadence_and_overrides(tiny_cifar, experiment, gemini):
    g = gemini(reply("LR: 0.05"))
    assert train(experiment, "cadence3", "--data-dir", tiny_cifar, "--epochs", 7, "--step-size", 100) == 0
    assert (
        cli(
            "train",
            "--arm",
            "cadence5",
            "--signals",
            "losses,grad_norms,per_class",
            "--every",
            2,
            "--data-dir",
            tiny_cifar,
            "--epochs",
            3,
            *ONE_STEP,
            "--experiment",
            experiment,
        )
        == 0
    )
    cad3, over = sorted(runs_of(experiment), key=lambda r: r.info.start_time)
    assert asked_epochs(cad3.info.run_id) == ["advisor/epoch_03", "advisor/epoch_06"]
    assert lrs(cad3.info.run_id) == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]
    assert asked_epochs(over.info.run_id) == ["advisor/epoch_02"]
    assert over.data.params["arm.signals"] == "losses,grad_norms,per_class" and over.data.params["arm.every"] == "2"
    assert "Per-class test accuracy" in g.requests[-1]["body"]["contents"][0]["parts"][0]["text"]


def test_a_cadence_that_can_never_ask_says_so(tiny_cifar, experiment, gemini):
    g = gemini(reply("LR: 0.05"))
    with pytest.warns(
        UserWarning,
        match="arm 'cadence5' asks every 5 epochs and never after the last one: in 5 epochs it will make no call",
    ):
        assert train(experiment, "cadence5", "--data-dir", tiny_cifar, "--epochs", 5) == 0
    assert g.requests == [] and runs_of(experiment)[0].data.metrics["llm_calls"] == 0


def test_reply_variants_follow_the_rule_and_replay_reproduces_them(tiny_cifar, experiment, gemini, monkeypatch):
    gemini(
        reply("I'd keep going as you are."),  # no phrase -> keep
        reply("Raise the learning rate to 1.5."),  # out of (0, 1) -> keep
        reply("Reduce the learning rate by a factor of 10."),  # '10' -> out of range
        reply(None, finish="MAX_TOKENS"),  # thinking ate the budget
        reply("New LR = 5E-04, since the loss has flattened."),
    )  # accepted after the cut
    assert train(experiment, "losses", "--data-dir", tiny_cifar, "--epochs", 6) == 0
    (run,) = runs_of(experiment)
    rows = calls(run)
    assert [r["accepted"] for r in rows] == [False, False, False, False, True]
    assert rows[1]["reason"] == "out of range (0, 1): 1.5" and rows[2]["parsed_lr"] == 10
    assert rows[3]["reason"] == "no reply text (finish_reason MAX_TOKENS); reply cut at llm_max_tokens"
    assert rows[4]["scheduler_lr"] == pytest.approx(0.01) and rows[4]["applied_lr"] == 5e-4
    assert lrs(run.info.run_id) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1, 5e-4])

    # Replay: no server, no key; the same LR trajectory and the same metrics.
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL")
    monkeypatch.delenv("GOOGLE_API_KEY")
    assert (
        train(
            experiment,
            "losses",
            "--data-dir",
            tiny_cifar,
            "--epochs",
            6,
            "--advisor",
            "replay",
            "--replay-run-id",
            run.info.run_id,
        )
        == 0
    )
    replay = next(r for r in runs_of(experiment) if r.info.run_id != run.info.run_id)
    assert lrs(replay.info.run_id) == lrs(run.info.run_id)
    assert history(replay.info.run_id, "train_loss") == history(run.info.run_id, "train_loss")
    assert "replay_prompt_mismatch" not in replay.data.tags and replay.data.tags["replay_of"] == run.info.run_id

    # A replay whose training differs (another seed) reports the differing prompts.
    with pytest.warns(UserWarning, match="prompt at epoch 1 differs"):
        assert (
            train(
                experiment,
                "losses",
                "--data-dir",
                tiny_cifar,
                "--epochs",
                3,
                "--seed",
                9,
                "--advisor",
                "replay",
                "--replay-run-id",
                run.info.run_id,
            )
            == 0
        )
    other = max(runs_of(experiment), key=lambda r: r.info.start_time)
    assert other.data.tags["replay_prompt_mismatch"] == "1,2"


def test_retries_wait_as_told_then_succeed(tiny_cifar, experiment, gemini):
    g = gemini(
        error(429, retry_delay="1.5s"),
        error(500),
        error(503),
        reply("learning rate: 0.02", delay=2.5),  # past the 1 s timeout
        reply("learning rate: 0.03"),
    )
    assert (
        train(experiment, "losses", "--data-dir", tiny_cifar, "--epochs", 2, "--llm-timeout", 1, "--llm-max-wait", 1.6)
        == 0
    )
    gaps = [b["time"] - a["time"] for a, b in zip(g.requests, g.requests[1:])]
    assert len(g.requests) == 5
    assert gaps[0] >= 1.5  # never sooner than RetryInfo (while it asks no more than llm_max_wait)
    assert all(gap < 2.0 for gap in gaps[1:3])  # the backoff is capped at llm_max_wait
    assert gaps[3] >= 2.0  # a 1 s timeout, then at least the timeout again before the next attempt
    (run,) = runs_of(experiment)
    (row,) = calls(run)
    assert row["attempts"] == 5 and row["applied_lr"] == 0.03 and run.info.status == "FINISHED"


def test_a_retry_delay_beyond_llm_max_wait_fails_the_exchange_at_once(tiny_cifar, experiment, gemini):
    g = gemini(error(429, retry_delay="3600s"))
    assert train(experiment, "losses", "--data-dir", tiny_cifar, "--epochs", 2) == 0
    assert len(g.requests) == 1
    (run,) = runs_of(experiment)
    (row,) = calls(run)
    assert row["reason"].endswith("server asked to wait 3600 s > llm_max_wait 60 s") and row["attempts"] == 1


def test_exhausted_and_per_day_errors(tiny_cifar, experiment, gemini, capsys):
    g = gemini(error(429, retry_delay="0.1s", quota_id="GenerateRequestsPerDayPerProjectPerModel-FreeTier"))
    assert train(experiment, "losses", "--data-dir", tiny_cifar, "--epochs", 2) == 0
    assert len(g.requests) == 1  # a per-day quota is not retried
    g = gemini(error(500))
    assert (
        train(
            experiment, "losses", "--data-dir", tiny_cifar, "--epochs", 2, "--llm-attempts", 3, "--llm-max-wait", 0.05
        )
        == 0
    )
    assert len(g.requests) == 3
    day, five = sorted(runs_of(experiment), key=lambda r: r.info.start_time)
    (row,) = calls(day)
    assert "per-day quota" in row["reason"] and not row["accepted"] and row["attempts"] == 1
    (row,) = calls(five)
    assert row["reason"].startswith("api error: 500") and row["attempts"] == 3
    assert lrs(five.info.run_id) == [0.1, 0.1] and five.info.status == "FINISHED"

    # on_advisor_error=fail: the run ends FAILED, with what was logged kept.
    capsys.readouterr()
    assert (
        train(
            experiment,
            "losses",
            "--data-dir",
            tiny_cifar,
            "--epochs",
            3,
            "--llm-attempts",
            1,
            "--on-advisor-error",
            "fail",
        )
        == 1
    )
    assert "failed" in capsys.readouterr().err
    failed = max(runs_of(experiment), key=lambda r: r.info.start_time)
    assert failed.info.status == "FAILED" and "api error: 500" in failed.data.tags["failure_reason"]
    assert len(history(failed.info.run_id, "train_loss")) == 1 and len(calls(failed)) == 1


def test_json_parser_and_max_factor(tiny_cifar, experiment, gemini, monkeypatch):
    monkeypatch.setenv("GOOGLE_GENAI_API_VERSION", "v1beta")  # the 2.x SDKs' path
    g = gemini(
        reply(json.dumps({"learning_rate": 0.05, "reasoning": "halve it"})),
        reply(json.dumps({"learning_rate": 0.001, "reasoning": "cut hard"})),
    )
    assert (
        train(experiment, "losses", "--data-dir", tiny_cifar, "--epochs", 3, "--parser", "json", "--max-factor", 2) == 0
    )
    assert g.requests[0]["path"].startswith("/v1beta/")
    config = g.requests[0]["body"]["generationConfig"]
    assert config["maxOutputTokens"] == 1024 + 24576  # the reply's cap plus room for the model's own thinking
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["properties"]["learning_rate"] == {"type": "number"}
    (run,) = runs_of(experiment)
    assert lrs(run.info.run_id) == pytest.approx([0.1, 0.05, 0.025])  # 0.001 clamped to 0.05 / 2
    assert calls(run)[1]["reason"].startswith("accepted, clamped to 0.025")


def test_llm_arm_without_credentials_fails_before_training(tiny_cifar, experiment, monkeypatch, capsys):
    for var in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(var, raising=False)
    assert train(experiment, "losses", "--data-dir", tiny_cifar, "--epochs", 2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GOOGLE_API_KEY or GEMINI_API_KEY" in err[0]
    assert runs_of(experiment) == []
