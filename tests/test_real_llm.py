"""Opt-in: a real OpenAI-compatible server instead of the stand-ins, e.g. llama.cpp's server with SmolLM2-135M as in
the README's "A real local model". Skipped unless LRADVISOR_REAL_LLM_URL names its /v1 URL:

    LRADVISOR_REAL_LLM_URL=http://127.0.0.1:8080/v1 python -m pytest -m real_llm

It asserts the records (what was sent, answered, parsed, applied and counted), never the model's wisdom: a 135M
model recites and echoes, and that is fine here.
"""

import json
import os

import mlflow
import pytest

from conftest import cli, history, runs_of

URL = os.environ.get("LRADVISOR_REAL_LLM_URL", "")
pytestmark = [
    pytest.mark.real_llm,
    pytest.mark.skipif(
        not URL,
        reason="opt-in: set LRADVISOR_REAL_LLM_URL to a running OpenAI-compatible "
        "server's /v1 URL (README: A real local model)",
    ),
]


@pytest.mark.parametrize("parser", ["regex", "json"])
def test_a_real_local_model_end_to_end(parser, cifar_dir, experiment, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_BASE_URL", URL)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server needs none
    # llm_model auto: the server's one model; the timeout is generous for a CPU-served model.
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--advisor",
            "openai",
            "--parser",
            parser,
            "--epochs",
            3,
            "--llm-timeout",
            180,
            "--batch-size",
            20,
            "--subset-ratio",
            0.25,
            "--data-dir",
            cifar_dir,
            "--experiment",
            experiment,
        )
        == 0
    )
    (run,) = runs_of(experiment)
    client = mlflow.MlflowClient()
    listed = json.load(open(client.download_artifacts(run.info.run_id, "advisor/server_models.json", str(tmp_path))))
    assert listed["base_url"] == URL.rstrip("/") or listed["base_url"] == URL
    (model,) = listed["ids"]
    assert run.data.params["llm_model_used"] == model
    rows = client.load_table(run.info.experiment_id, "advisor/calls.json", run_ids=[run.info.run_id]).to_dict("records")
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["model"] == model and isinstance(r["reply"], str) and r["attempts"] >= 1
        assert r["prompt_tokens"] > 0 and r["finish_reason"] in ("stop", "length")
        assert r["changed"] == (abs(r["applied_lr"] - r["scheduler_lr"]) > 1e-9 * r["scheduler_lr"])
        if parser == "json":  # llama-cpp-python refuses json_schema and takes json_object; others take json_schema
            assert r["response_format"] in ("json_schema", "json_object")
    lrs = [v for _, v in history(run.info.run_id, "lr")]
    assert lrs[1:] == pytest.approx([r["applied_lr"] for r in rows])
    m = run.data.metrics
    assert (
        m["llm_calls"] == 2 and m["llm_failed_calls"] == 0 and m["advisor_changes"] == sum(r["changed"] for r in rows)
    )
