"""Any LLM and your own prompts: the OpenAI-compatible advisor through the real `openai` client against a
Chat Completions server on 127.0.0.1, prompt templates from files, and the published prompt unchanged."""

import glob
import itertools
import json
import os

import mlflow
import pytest

from conftest import cli, history, runs_of
from fake_openai import KEY, FakeOpenAI, chat, status
from lradvisor import prompt
from lradvisor.data import CLASSES

TINY = ["--batch-size", 20, "--subset-ratio", 0.25]


@pytest.fixture
def openai_server(monkeypatch):
    servers = []

    def start(*script, key=KEY):
        for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            monkeypatch.delenv(var, raising=False)
        s = FakeOpenAI(script, key=key).__enter__()
        servers.append(s)
        for k, v in s.env().items():
            monkeypatch.setenv(k, v)
        return s

    yield start
    for s in servers:
        s.__exit__()


def calls(run):
    client = mlflow.MlflowClient()
    return client.load_table(run.info.experiment_id, "advisor/calls.json", run_ids=[run.info.run_id]).to_dict("records")


def lrs(run):
    return [v for _, v in history(run.info.run_id, "lr")]


def test_openai_advisor_end_to_end_and_the_key_stays_secret(cifar_dir, experiment, openai_server, tmp_path, capfd):
    s = openai_server(chat("The learning rate should be 0.03.", model="qwen2.5-7b-instruct-q4"))
    assert cli("train", "--arm", "per_class", "--advisor", "openai", "--llm-model", "qwen2.5-7b", "--data-dir", cifar_dir,
               "--epochs", 3, *TINY, "--experiment", experiment) == 0
    (run,) = runs_of(experiment)
    assert len(s.requests) == 2 and all(r["auth"] == f"Bearer {KEY}" for r in s.requests)
    body = s.requests[0]["body"]
    assert body["model"] == "qwen2.5-7b" and body["messages"][0]["role"] == "user"
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
    store = mlflow.get_tracking_uri().removeprefix("sqlite:///")
    files = [store] + glob.glob(os.path.join(mlflow.MlflowClient().download_artifacts(run.info.run_id, "", str(tmp_path)),
                                             "**", "*"), recursive=True)
    assert [f for f in files if os.path.isfile(f) and KEY.encode() in open(f, "rb").read()] == []
    out = capfd.readouterr()
    assert KEY not in out.out + out.err and KEY not in json.dumps([t.to_dict() for t in traces])


def test_openai_retries_wait_as_told(cifar_dir, experiment, openai_server):
    s = openai_server(status(429, retry_after="1.5"), status(503), chat("LR 0.02", delay=2.5),  # past the 1 s timeout
                      chat("", finish="length"), chat("LR 0.04"))
    assert cli("train", "--arm", "losses", "--advisor", "openai", "--llm-model", "m", "--llm-timeout", 1,
               "--llm-max-wait", 0.1, "--data-dir", cifar_dir, "--epochs", 3, *TINY, "--experiment", experiment) == 0
    gaps = [b["time"] - a["time"] for a, b in zip(s.requests, s.requests[1:])]
    assert gaps[0] >= 1.5 and gaps[1] < 1.4  # never sooner than Retry-After, though the backoff cap is 0.1 s
    (run,) = runs_of(experiment)
    first, second = calls(run)
    assert first["attempts"] == 4 and first["reason"] == "no reply text (finish_reason length)" and not first["accepted"]
    assert second["applied_lr"] == 0.04 and second["attempts"] == 1


def test_openai_json_falls_back_to_text_when_refused(cifar_dir, experiment, openai_server):
    s = openai_server(status(400, message="response_format json_schema is not supported"),
                      chat(json.dumps({"learning_rate": 0.05, "reasoning": "halve"})))
    with pytest.warns(UserWarning, match="refused response_format"):
        assert cli("train", "--arm", "losses", "--advisor", "openai", "--llm-model", "m", "--parser", "json",
                   "--data-dir", cifar_dir, "--epochs", 3, *TINY, "--experiment", experiment) == 0
    assert s.requests[0]["body"]["response_format"]["json_schema"]["schema"] == prompt.JSON_SCHEMA
    assert all("response_format" not in r["body"] for r in s.requests[1:])
    (run,) = runs_of(experiment)
    assert lrs(run) == pytest.approx([0.1, 0.05, 0.05])


def test_keys_local_servers_and_hosted_endpoints(cifar_dir, experiment, openai_server, monkeypatch, capsys):
    s = openai_server(chat("LR 0.02"), key=None)  # a local server takes any key: none needed
    assert cli("train", "--arm", "losses", "--advisor", "openai", "--llm-model", "m", "--data-dir", cifar_dir,
               "--epochs", 2, *TINY, "--experiment", experiment) == 0
    assert s.requests[0]["auth"] == "Bearer not-needed"
    monkeypatch.delenv("OPENAI_BASE_URL")
    capsys.readouterr()
    assert cli("train", "--arm", "losses", "--advisor", "openai", "--llm-model", "m", "--data-dir", cifar_dir,
               "--epochs", 2, *TINY, "--experiment", experiment) == 2
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
        lines += [f"- Loss values (last {n} epochs): {losses}",
                  f"- Overall trend of losses: {prompt.overall_trend(losses)}",
                  f"- Recent trend (last {min(n, prompt.RECENT)} epochs): {prompt.recent_trend(losses)}"]
    if "grad_norms" in signals:
        norms = [float(x) for x in history["grad_norm"][-n:]]
        lines += [f"- Gradient norms (per-epoch mean, last {n} epochs): {norms}",
                  f"- Overall trend of gradient norms: {prompt.overall_trend(norms)}"]
    if "per_class" in signals:
        acc = history["class_acc"][-1]
        worst = sorted(CLASSES, key=lambda c: acc[c])[:3]
        lines += ["- Per-class test accuracy: " + ", ".join(f"{c}: {acc[c]:.1f}%" for c in CLASSES),
                  "- Worst three classes: " + ", ".join(f"{c}: {acc[c]:.1f}%" for c in worst)]
    tail = prompt.TAIL + ("\n\n" + prompt.JSON_TAIL if json_reply else "")
    return prompt.HEAD + "\n\n" + "\n".join(lines) + "\n\n" + tail


def fake_history(n):
    return {"lr": [0.1 * 0.1 ** (i // 5) for i in range(n)], "train_loss": [2.3 / (1 + i) + 0.01 * (i % 2) for i in range(n)],
            "grad_norm": [5.0 - 0.3 * i for i in range(n)],
            "class_acc": [{c: (7.5 * (k + 1) + i) % 100 for k, c in enumerate(CLASSES)} for i in range(n)]}


@pytest.mark.parametrize("signals", [s for r in range(1, 5) for s in itertools.combinations(
    ("losses", "lr_history", "grad_norms", "per_class"), r)])
def test_published_prompts_are_byte_identical_to_before(signals):
    for n, window, json_reply, lr in itertools.product((1, 3, 7), (1, 5), (False, True), (0.1, 0.010000000000000002)):
        h = fake_history(n)
        assert prompt.build_prompt(signals, h, lr, window, json_reply) == old_build_prompt(signals, h, lr, window, json_reply)


def test_every_template_variable_renders(cifar_dir, experiment, openai_server, tmp_path):
    template = tmp_path / "mine.txt"
    template.write_text("\n".join(f"{name}={{{{{name}}}}}" for name in prompt.VARIABLES) + "\nLR please.")
    s = openai_server(chat("LR 0.05"), chat("LR: 0.2"))
    assert cli("train", "--arm", "feedback", "--advisor", "openai", "--llm-model", "m", "--prompt", template,
               "--data-dir", cifar_dir, "--epochs", 3, *TINY, "--experiment", experiment) == 0
    (run,) = runs_of(experiment)
    losses = [v for _, v in history(run.info.run_id, "train_loss")]
    norms = [v for _, v in history(run.info.run_id, "grad_norm")]
    sent = dict(line.split("=", 1) for line in s.requests[1]["body"]["messages"][0]["content"].splitlines()[:-1])
    assert sent["epoch"] == "2" and sent["epochs"] == "3" and sent["current_lr"] == "0.05"
    assert sent["losses"] == str(losses[:2]) and sent["grad_norms"] == str(norms[:2])
    assert sent["lr_history"] == "[0.1, 0.05]" and sent["loss_trend"] == prompt.overall_trend(losses[:2])
    assert sent["recent_trend"] == prompt.recent_trend(losses[:2])
    assert sent["grad_norm_trend"] == prompt.overall_trend(norms[:2])
    acc = {c: v for c in CLASSES for _, v in history(run.info.run_id, f"class_acc/{c}")[1:2]}
    assert sent["per_class"] == ", ".join(f"{c}: {acc[c]:.1f}%" for c in CLASSES)
    assert sent["worst_classes"] == ", ".join(f"{c}: {acc[c]:.1f}%" for c in sorted(CLASSES, key=acc.get)[:3])
    assert sent["feedback"] == f"epoch 1: 0.05 (applied, next loss {losses[1]:.4g})"
    first = dict(line.split("=", 1) for line in s.requests[0]["body"]["messages"][0]["content"].splitlines()[:-1])
    assert first["feedback"] == "none yet"
    client = mlflow.MlflowClient()
    logged = open(client.download_artifacts(run.info.run_id, "advisor/prompt_template.txt", str(tmp_path))).read()
    assert logged == template.read_text() and run.data.params["prompt"] == str(template)


def test_unknown_placeholder_is_refused_before_training(cifar_dir, experiment, openai_server, tmp_path, capsys):
    openai_server(chat("LR 0.05"))
    bad = tmp_path / "bad.txt"
    bad.write_text("loss {{losses}}, mood {{vibes}}")
    assert cli("train", "--arm", "losses", "--advisor", "openai", "--llm-model", "m", "--prompt", bad,
               "--data-dir", cifar_dir, "--epochs", 2, "--experiment", experiment) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown placeholder {{vibes}}" in err[0] and runs_of(experiment) == []


def test_feedback_arm_line(cifar_dir, experiment, openai_server):
    s = openai_server(chat("LR 0.05"), chat("no idea"), chat("LR 2"))
    assert cli("train", "--arm", "feedback", "--advisor", "openai", "--llm-model", "m", "--data-dir", cifar_dir,
               "--epochs", 4, *TINY, "--experiment", experiment) == 0
    (run,) = runs_of(experiment)
    losses = [v for _, v in history(run.info.run_id, "train_loss")]
    last = s.requests[-1]["body"]["messages"][0]["content"]
    assert (f"- Your earlier suggestions: epoch 1: 0.05 (applied, next loss {losses[1]:.4g}), "
            f"epoch 2: no number (not applied, next loss {losses[2]:.4g})\n") in last
