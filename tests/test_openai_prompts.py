"""Any LLM and your own prompts: the OpenAI-compatible advisor through the real `openai` client against a
Chat Completions server on 127.0.0.1, prompt templates from files, and the published prompt unchanged."""

import csv
import glob
import itertools
import json
import os
import subprocess
import sys
import time

import mlflow
import pytest

from lradvisor.data.registry import CLASSES
from lradvisor.llm import prompt

from conftest import FEW_IMAGES, ROOT, TWO_STEPS, calls, cli, free_port, history, point, runs_of, store_holds
from fake_openai import KEY, FakeOpenAI, chat, status


@pytest.fixture
def openai_server(monkeypatch):
    servers = []

    def start(*script, key=KEY, models=None, **kw):
        """models: what GET /v1/models lists; None (404) unless a test is about it, so that the model names the
        tests give draw no warning."""
        for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            monkeypatch.delenv(var, raising=False)
        s = FakeOpenAI(script, key=key, models=models, **kw).__enter__()
        servers.append(s)
        point(monkeypatch, s)
        return s

    yield start
    for s in servers:
        s.__exit__()


def lrs(run):
    return [v for _, v in history(run.info.run_id, "lr")]


def test_openai_advisor_end_to_end_and_the_key_stays_secret(cifar_dir, experiment, openai_server, tmp_path, capfd):
    s = openai_server(chat("The learning rate should be 0.03.", model="qwen2.5-7b-instruct-q4"))
    assert (
        cli(
            "train",
            "--arm",
            "per_class",
            "--advisor",
            "openai",
            "--llm-model",
            "qwen2.5-7b",
            "--data-dir",
            cifar_dir,
            "--epochs",
            3,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    assert s.requests[0]["path"] == "/v1/models"  # asked once, recorded in advisor/server_models.json
    assert len(chats(s)) == 2 and all(r["auth"] == f"Bearer {KEY}" for r in s.requests)
    body = chats(s)[0]["body"]
    assert body["model"] == "qwen2.5-7b" and body["messages"][0]["role"] == "user" and body["max_tokens"] == 1024
    assert "- Per-class test accuracy: plane: " in body["messages"][0]["content"]
    assert lrs(run) == pytest.approx([0.1, 0.03, 0.03])
    rows = calls(run)
    assert rows[0]["model"] == "qwen2.5-7b" and rows[0]["model_version"] == "qwen2.5-7b-instruct-q4"
    assert rows[0]["prompt_tokens"] == 110 and rows[0]["output_tokens"] == 25 and rows[0]["finish_reason"] == "stop"
    assert rows[0]["prompt"] == body["messages"][0]["content"] and rows[0]["accepted"]
    assert run.data.params["arm.advisor"] == "openai"
    traces = mlflow.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id, return_type="list")
    assert len(traces) == 2
    # The key: nowhere in the store, the artifacts, the traces, or the console.
    files = glob.glob(
        os.path.join(mlflow.MlflowClient().download_artifacts(run.info.run_id, "", str(tmp_path)), "**", "*"),
        recursive=True,
    )
    assert [f for f in files if os.path.isfile(f) and KEY.encode() in open(f, "rb").read()] == []
    assert not store_holds(KEY)
    out = capfd.readouterr()
    assert KEY not in out.out + out.err and KEY not in json.dumps([t.to_dict() for t in traces])


def test_openai_retries_wait_as_told(cifar_dir, experiment, openai_server):
    s = openai_server(
        status(429, retry_after="1.5"),
        status(503),
        chat("LR 0.02", delay=2.5),  # past the 1 s timeout
        chat("", finish="length"),
        chat("LR 0.04"),
    )
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--llm-timeout",
            1,
            "--llm-max-wait",
            1.6,
            "--data-dir",
            cifar_dir,
            "--epochs",
            3,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    gaps = [b["time"] - a["time"] for a, b in zip(chats(s), chats(s)[1:])]
    assert gaps[0] >= 1.5  # never sooner than Retry-After (while it asks no more than llm_max_wait)
    assert gaps[1] < 2.0  # the backoff is capped at llm_max_wait
    assert gaps[2] >= 2.0  # a 1 s timeout, then at least 1 s for a single-slot server to finish the abandoned reply
    (run,) = runs_of(experiment)
    first, second = calls(run)
    assert first["attempts"] == 4 and not first["accepted"]
    assert first["reason"] == "no reply text (finish_reason length); reply cut at llm_max_tokens"
    assert second["applied_lr"] == 0.04 and second["attempts"] == 1


def chats(server):
    return [r for r in server.requests if r["path"] == "/v1/chat/completions"]


def test_openai_json_falls_back_in_steps_to_text_when_refused(cifar_dir, experiment, openai_server):
    s = openai_server(
        status(400, message="response_format json_schema is not supported"),
        status(422, message="unknown field response_format.schema"),
        chat(json.dumps({"learning_rate": 0.05, "reasoning": "halve"})),
    )
    with pytest.warns(UserWarning, match="refused response_format") as said:
        assert (
            cli(
                "train",
                "--arm",
                "losses",
                "--advisor",
                "openai",
                "--llm-model",
                "m",
                "--parser",
                "json",
                "--data-dir",
                cifar_dir,
                "--epochs",
                3,
                *FEW_IMAGES,
                "--experiment",
                experiment,
            )
            == 0
        )
    sent = [r["body"].get("response_format") for r in chats(s)]
    assert sent[0]["json_schema"]["schema"] == prompt.JSON_SCHEMA
    assert sent[1] == {"type": "json_object", "schema": prompt.JSON_SCHEMA} and sent[2:] == [None, None]
    assert len([w for w in said if "refused response_format" in str(w.message)]) == 2  # once per step
    (run,) = runs_of(experiment)
    assert lrs(run) == pytest.approx([0.1, 0.05, 0.05])
    assert [r["response_format"] for r in calls(run)] == ["text", "text"]


def test_llama_cpp_json_schema_500_falls_back_to_json_object(cifar_dir, experiment, openai_server, tmp_path):
    """llama-cpp-python answers json_schema with HTTP 500 and takes json_object + schema: one step down, kept
    for the rest of the run, recorded per exchange; no retries spent on it."""
    s = openai_server(
        chat(json.dumps({"learning_rate": 0.05, "reasoning": "halve"})),
        like="llama-cpp-python",
        models=["smollm2-135m"],
    )
    with pytest.warns(
        UserWarning,
        match="refused response_format json_schema .*500 internal_server_error: 1 validation "
        "error: {'type': 'literal_error', 'loc': .'body', 'response_format'",
    ):
        assert (
            cli(
                "train",
                "--arm",
                "losses",
                "--advisor",
                "openai",
                "--parser",
                "json",
                "--data-dir",
                cifar_dir,
                "--epochs",
                3,
                *FEW_IMAGES,
                "--experiment",
                experiment,
            )
            == 0
        )
    assert [r["body"]["response_format"]["type"] for r in chats(s)] == ["json_schema", "json_object", "json_object"]
    assert chats(s)[1]["body"]["response_format"]["schema"] == prompt.JSON_SCHEMA
    (run,) = runs_of(experiment)
    rows = calls(run)
    assert [r["response_format"] for r in rows] == ["json_object", "json_object"]
    assert [r["attempts"] for r in rows] == [1, 1] and lrs(run) == pytest.approx([0.1, 0.05, 0.05])


def test_max_tokens_cut_replies_and_waits_after_a_timeout(cifar_dir, experiment, openai_server):
    s = openai_server(chat("LR 0.02", delay=2.5), chat("The learning rate should be 0.04 because the", finish="length"))
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--llm-timeout",
            1,
            "--llm-max-wait",
            0.1,
            "--data-dir",
            cifar_dir,
            "--epochs",
            2,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    first, second = chats(s)
    assert second["time"] - first["time"] >= 2.0  # 1 s timed out, then at least the timeout before asking again
    assert first["body"]["max_tokens"] == 1024
    (run,) = runs_of(experiment)
    (row,) = calls(run)
    assert row["reason"] == "accepted; reply cut at llm_max_tokens" and row["applied_lr"] == 0.04
    s = openai_server(chat("LR 0.03"))
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--llm-max-tokens",
            0,
            "--data-dir",
            cifar_dir,
            "--epochs",
            2,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    assert "max_tokens" not in chats(s)[0]["body"]


def test_changed_counts_only_answers_that_move_the_lr(cifar_dir, experiment, openai_server, tmp_path):
    openai_server(chat("- Current Learning Rate: 0.1\n- Loss values: ..."), chat("LR 0.05"), chat("LR: 0.05"))
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--data-dir",
            cifar_dir,
            "--epochs",
            4,
            "--step-size",
            100,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    rows = calls(run)
    assert [r["accepted"] for r in rows] == [True, True, True]  # the published rule, unchanged
    assert [r["changed"] for r in rows] == [False, True, False]
    assert rows[0]["reason"] == rows[2]["reason"] == "accepted, equal to the scheduler's LR"
    assert run.data.metrics["advisor_changes"] == 1
    assert cli("compare", "--experiment", experiment, "--output-dir", tmp_path) == 0
    with open(tmp_path / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["accepted"]) == 3 and float(row["changes"]) == 1


def test_llm_model_auto_asks_the_server(cifar_dir, experiment, openai_server, tmp_path, capsys):
    s = openai_server(chat("LR 0.05"), key=None, models=["smollm2-135m"])
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--data-dir",
            cifar_dir,
            "--epochs",
            2,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    assert "the server at http://127.0.0.1:" in capsys.readouterr().out
    assert chats(s)[0]["body"]["model"] == "smollm2-135m"
    (run,) = runs_of(experiment)
    assert run.data.params["llm_model"] == "auto" and run.data.params["llm_model_used"] == "smollm2-135m"
    assert calls(run)[0]["model"] == "smollm2-135m"
    listed = json.load(
        open(mlflow.MlflowClient().download_artifacts(run.info.run_id, "advisor/server_models.json", str(tmp_path)))
    )
    assert listed == {"base_url": s.env()["OPENAI_BASE_URL"], "ids": ["smollm2-135m"]}
    for models, says in (
        (["a-7b", "b-70b"], "serves 2 models (a-7b, b-70b); pick one with --llm-model a-7b"),
        ([], "lists no model"),
        (None, "cannot list the models of http://127.0.0.1:"),
    ):
        s.models = models
        assert (
            cli(
                "train",
                "--arm",
                "losses",
                "--advisor",
                "openai",
                "--data-dir",
                cifar_dir,
                "--epochs",
                2,
                *FEW_IMAGES,
                "--experiment",
                experiment,
            )
            == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert len(runs_of(experiment)) == 1
    s.models = ["smollm2-135m"]  # a name the server does not list: permissive servers answer anyway
    with pytest.warns(UserWarning, match="does not list model 'no-such-model' .it lists: smollm2-135m"):
        assert (
            cli(
                "train",
                "--arm",
                "losses",
                "--advisor",
                "openai",
                "--llm-model",
                "no-such-model",
                "--data-dir",
                cifar_dir,
                "--epochs",
                2,
                *FEW_IMAGES,
                "--experiment",
                experiment,
            )
            == 0
        )


def test_server_errors_are_one_line_and_kept_whole_with_failures_and_waits_counted(
    cifar_dir, experiment, openai_server, tmp_path, capfd
):
    traceback = 'Traceback (most recent call last):\n  File "server.py", line 1\nRuntimeError: ' + "x" * 300
    openai_server(status(503), chat("LR 0.05"), status(500, message=traceback))
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--llm-attempts",
            2,
            "--llm-max-wait",
            0.2,
            "--data-dir",
            cifar_dir,
            "--epochs",
            3,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    ok, failed = calls(run)
    # the first line, with the next one where the first only announces it (as "1 validation error:" does)
    assert failed["reason"] == 'api error: 500 fake: Traceback (most recent call last): File "server.py", line 1'
    assert not isinstance(failed["reply"], str)  # no reply at all (the table reads it back as NaN)
    body = open(
        mlflow.MlflowClient().download_artifacts(run.info.run_id, "advisor/epoch_02/error.txt", str(tmp_path))
    ).read()
    assert "RuntimeError: " + "x" * 300 in json.loads(body)["error"]["message"]
    out = capfd.readouterr().out
    assert "Traceback" in out and "RuntimeError" not in out  # one line of it, not the whole
    m = run.data.metrics
    assert m["llm_calls"] == 2 and m["llm_failed_calls"] == 1
    assert 0 < ok["retry_wait_s"] <= 0.2 and 0 < failed["retry_wait_s"] <= 0.2
    assert m["llm_retry_seconds"] == pytest.approx(ok["retry_wait_s"] + failed["retry_wait_s"])
    assert m["llm_seconds"] == pytest.approx(ok["latency_s"] + failed["latency_s"] - m["llm_retry_seconds"])


def test_a_server_asking_for_more_than_llm_max_wait_fails_the_exchange_at_once(cifar_dir, experiment, openai_server):
    openai_server(status(429, retry_after="3600"))
    t0 = time.monotonic()
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--data-dir",
            cifar_dir,
            "--epochs",
            2,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    assert time.monotonic() - t0 < 60
    (run,) = runs_of(experiment)
    (row,) = calls(run)
    assert row["attempts"] == 1 and row["reason"].endswith("server asked to wait 3600 s > llm_max_wait 60 s")


def test_keys_local_servers_and_hosted_endpoints(cifar_dir, experiment, openai_server, monkeypatch, capsys):
    s = openai_server(chat("LR 0.02"), key=None)  # a local server takes any key: none needed
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--data-dir",
            cifar_dir,
            "--epochs",
            2,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    assert s.requests[0]["auth"] == "Bearer not-needed"
    monkeypatch.delenv("OPENAI_BASE_URL")
    capsys.readouterr()
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--data-dir",
            cifar_dir,
            "--epochs",
            2,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a key: export OPENAI_API_KEY" in err[0]
    assert len(runs_of(experiment)) == 1


# ---- templates --------------------------------------------------------------------------------------------


def old_build_prompt(signals, history, current_lr, window, json_reply=False):
    """The prompt builder as it was before templates (commit 46c7bc1), kept as the oracle."""
    n = min(window, len(history["train_loss"]))
    losses = [float(x) for x in history["train_loss"][-n:]]
    lines = [f"- Current Learning Rate: {current_lr}"]
    if "lr_history" in signals:
        lines.append(f"- Learning rate history (per-epoch, last {n} epochs): {[float(x) for x in history['lr'][-n:]]}")
    if "losses" in signals:
        lines += [
            f"- Loss values (last {n} epochs): {losses}",
            f"- Overall trend of losses: {prompt.overall_trend(losses)}",
            f"- Recent trend (last {min(n, prompt.RECENT)} epochs): {prompt.recent_trend(losses)}",
        ]
    if "grad_norms" in signals:
        norms = [float(x) for x in history["grad_norm"][-n:]]
        lines += [
            f"- Gradient norms (per-epoch mean, last {n} epochs): {norms}",
            f"- Overall trend of gradient norms: {prompt.overall_trend(norms)}",
        ]
    if "per_class" in signals:
        acc = history["class_acc"][-1]
        worst = sorted(CLASSES, key=lambda c: acc[c])[:3]
        lines += [
            "- Per-class test accuracy: " + ", ".join(f"{c}: {acc[c]:.1f}%" for c in CLASSES),
            "- Worst three classes: " + ", ".join(f"{c}: {acc[c]:.1f}%" for c in worst),
        ]
    tail = prompt.TAIL + ("\n\n" + prompt.JSON_TAIL if json_reply else "")
    return prompt.HEAD + "\n\n" + "\n".join(lines) + "\n\n" + tail


def fake_history(n):
    return {
        "lr": [0.1 * 0.1 ** (i // 5) for i in range(n)],
        "train_loss": [2.3 / (1 + i) + 0.01 * (i % 2) for i in range(n)],
        "grad_norm": [5.0 - 0.3 * i for i in range(n)],
        "class_acc": [{c: (7.5 * (k + 1) + i) % 100 for k, c in enumerate(CLASSES)} for i in range(n)],
    }


@pytest.mark.parametrize(
    "signals",
    [s for r in range(1, 5) for s in itertools.combinations(("losses", "lr_history", "grad_norms", "per_class"), r)],
)
def test_published_prompts_are_byte_identical_to_before(signals):
    for n, window, json_reply, lr in itertools.product((1, 3, 7), (1, 5), (False, True), (0.1, 0.010000000000000002)):
        h = fake_history(n)
        assert prompt.build_prompt(signals, h, lr, window, json_reply) == old_build_prompt(
            signals, h, lr, window, json_reply
        )


def test_registered_prompts_render_exactly_the_built_in_ones(tracking_uri, capsys):
    """`lradvisor prompts register` stores templates that, filled in by MLflow's own format() or ours, are byte for
    byte the built-in prompt of every LLM arm, at every epoch, for short and long windows."""
    import mlflow.genai

    from lradvisor.arms import ARMS

    assert cli("prompts", "register", "--name", "same") == 0
    assert "registered prompts:/same-losses/" in capsys.readouterr().out
    for arm in ("losses", "lr_history", "grad_norms", "per_class", "feedback"):
        registered = mlflow.genai.load_prompt(f"prompts:/same-{arm}@latest")
        for epoch, window in itertools.product(range(1, 7), (1, 5)):
            h = fake_history(epoch)
            h["proposals"] = [(1, 0.05, True)] if epoch > 1 else []
            values = prompt.variables(h, 0.010000000000000002, window, 6)
            built = prompt.build_prompt(ARMS[arm]["signals"], h, 0.010000000000000002, window, epochs=6)
            assert registered.format(**values) == built, (arm, epoch, window)
            assert prompt.render(registered.template, values) == built


def test_every_template_variable_renders(cifar_dir, experiment, openai_server, tmp_path):
    template = tmp_path / "mine.txt"
    template.write_text("\n".join(f"{name}={{{{{name}}}}}" for name in prompt.VARIABLES) + "\nLR please.")
    s = openai_server(chat("LR 0.05"), chat("LR: 0.2"))
    assert (
        cli(
            "train",
            "--arm",
            "feedback",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--prompt",
            template,
            "--data-dir",
            cifar_dir,
            "--epochs",
            3,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    losses = [v for _, v in history(run.info.run_id, "train_loss")]
    norms = [v for _, v in history(run.info.run_id, "grad_norm")]
    sent = dict(line.split("=", 1) for line in chats(s)[1]["body"]["messages"][0]["content"].splitlines()[:-1])
    assert sent["epoch"] == "2" and sent["epochs"] == "3" and sent["current_lr"] == "0.05"
    assert sent["losses"] == str(losses[:2]) and sent["grad_norms"] == str(norms[:2])
    assert sent["lr_history"] == "[0.1, 0.05]" and sent["loss_trend"] == prompt.overall_trend(losses[:2])
    assert sent["recent_trend"] == prompt.recent_trend(losses[:2])
    assert sent["grad_norm_trend"] == prompt.overall_trend(norms[:2])
    acc = {c: v for c in CLASSES for _, v in history(run.info.run_id, f"class_acc/{c}")[1:2]}
    assert sent["per_class"] == ", ".join(f"{c}: {acc[c]:.1f}%" for c in CLASSES)
    assert sent["worst_classes"] == ", ".join(f"{c}: {acc[c]:.1f}%" for c in sorted(CLASSES, key=acc.get)[:3])
    assert sent["feedback"] == f"epoch 1: 0.05 (applied, next loss {losses[1]:.4g})"
    assert sent["window_epochs"] == "2" and sent["recent_epochs"] == "2"
    first = dict(line.split("=", 1) for line in chats(s)[0]["body"]["messages"][0]["content"].splitlines()[:-1])
    assert first["feedback"] == "none yet"
    client = mlflow.MlflowClient()
    logged = open(client.download_artifacts(run.info.run_id, "advisor/prompt_template.txt", str(tmp_path))).read()
    assert logged == template.read_text() and run.data.params["prompt"] == str(template)


@pytest.mark.parametrize(
    "content, says",
    [
        ("loss {{losses}}, mood {{vibes}}".encode(), "unknown placeholder {{vibes}}"),
        ("Lernrate ändern? {{losses}}".encode("latin-1"), "is not UTF-8 text (byte 9: b'\\xe4'); save it as UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not UTF-8 text (byte 0"),
        (b"{{losses}}\x00\x00", "holds NUL bytes: it is not a text file"),
    ],
)
def test_bad_template_files_are_refused_before_training(
    content, says, cifar_dir, experiment, openai_server, tmp_path, capsys
):
    openai_server(chat("LR 0.05"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--prompt",
            bad,
            "--data-dir",
            cifar_dir,
            "--epochs",
            2,
            "--experiment",
            experiment,
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and runs_of(experiment) == [], err


def test_feedback_arm_line(cifar_dir, experiment, openai_server):
    s = openai_server(chat("LR 0.05"), chat("no idea"), chat("LR 2"))
    assert (
        cli(
            "train",
            "--arm",
            "feedback",
            "--advisor",
            "openai",
            "--llm-model",
            "m",
            "--data-dir",
            cifar_dir,
            "--epochs",
            4,
            *FEW_IMAGES,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    losses = [v for _, v in history(run.info.run_id, "train_loss")]
    last = s.requests[-1]["body"]["messages"][0]["content"]
    assert (
        f"- Your earlier suggestions: epoch 1: 0.05 (applied, next loss {losses[1]:.4g}), "
        f"epoch 2: no number (not applied, next loss {losses[2]:.4g})\n"
    ) in last


def test_the_documented_stand_in_runs_an_llm_arm_with_nothing_installed(tiny_cifar, experiment, monkeypatch):
    """`scripts/local_llm.py --stand-in TEXT` (the manual's way to try an LLM arm's plumbing without a model) serves
    /v1/models and chat completions well enough for a whole run."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "local_llm.py"), "--stand-in", "LR 0.005", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "serving smollm2-135m" in proc.stdout.readline()
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        flags = ["--arm", "losses", "--advisor", "openai", "--epochs", 2, "--data-dir", tiny_cifar, *TWO_STEPS]
        assert cli("train", *flags, "--experiment", experiment) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    (run,) = runs_of(experiment)
    (row,) = calls(run)
    assert row["reply"] == "LR 0.005" and row["applied_lr"] == 0.005 and row["model"] == "smollm2-135m"
    assert run.data.params["llm_model_used"] == "smollm2-135m"
