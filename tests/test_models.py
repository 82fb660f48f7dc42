"""Many models in one study: a models file, the sweep's model x temperature axis, each exchange's cost, and compare's
cost column and Pareto figure. Against two real stand-in servers (generateContent and Chat Completions)."""

import csv
import json
import os

import mlflow
import pytest

from conftest import ONE_STEP, calls, cli, runs_of, store_holds
from fake_gemini import FakeGemini, reply
from fake_openai import FakeOpenAI, chat

TINY = ["--epochs", 2, *ONE_STEP]  # one exchange a run
KEY_A, KEY_B = "a-secret-DO-NOT-LOG-4d1e", "b-secret-DO-NOT-LOG-90ac"


def test_two_models_of_two_providers_in_one_sweep_with_their_cost(tiny_cifar, experiment, tmp_path, monkeypatch, capfd):
    for k in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(k, raising=False)  # each entry brings its own base URL and key variable
    monkeypatch.setenv("FAKE_A_KEY", KEY_A)
    monkeypatch.setenv("FAKE_B_KEY", KEY_B)
    # Different latencies and token counts: (prompt, reply, thinking) 120/30/50 and 200/60 of which 20 reasoning.
    with (
        FakeGemini([reply("The learning rate should be 0.05.", delay=0.4, tokens=(120, 30, 50))]) as g,
        FakeOpenAI([chat("LR 0.02", delay=0.1, tokens=(200, 60), reasoning_tokens=20)], key=KEY_B) as s,
    ):
        models = tmp_path / "models.yaml"
        models.write_text(
            f"fake-a:\n  provider: gemini\n  base_url: {g.url}\n  model: gemini-fake\n  key_env: FAKE_A_KEY\n"
            "  price_input: 1.0\n  price_output: 4.0\n  price_thinking: 2.0\n"
            f"fake-b:\n  provider: openai\n  base_url: http://127.0.0.1:{s.server.server_port}/v1\n"
            "  model: fake-model-7b-instruct\n  key_env: FAKE_B_KEY\n  price_input: 0.5\n  price_output: 1.5\n"
        )
        assert (
            cli(
                "sweep",
                "--arms",
                "baseline,losses",
                "--llm-models",
                "fake-a,fake-b",
                "--seeds",
                "0,1",
                "--models",
                models,
                "--sweep-id",
                "models1",
                "--parallel",
                2,
                "--data-dir",
                tiny_cifar,
                *TINY,
                "--experiment",
                experiment,
            )
            == 0
        )
    assert [r["key"] for r in g.requests] == [KEY_A] * 2 and all(
        "/models/gemini-fake:" in r["path"] for r in g.requests
    )
    posts = [r for r in s.requests if r["body"]]
    assert [r["auth"] for r in posts] == [f"Bearer {KEY_B}"] * 2
    assert {r["body"]["model"] for r in posts} == {"fake-model-7b-instruct"}

    runs = {
        (r.data.tags["arm"], r.data.params.get("llm_model"), r.data.params["seed"]): r
        for r in runs_of(experiment)
        if r.data.tags.get("role") == "arm"
    }
    assert len(runs) == 6  # the baseline once per seed, the LLM arm per model and seed
    a, b = runs[("losses", "fake-a", "0")], runs[("losses", "fake-b", "0")]
    assert a.info.run_name == "losses-s0 [fake-a]" and runs[("baseline", "auto", "0")].info.run_name == "baseline-s0"
    assert (a.data.params["arm.advisor"], a.data.params["llm_model_used"], a.data.params["temperature"]) == (
        "gemini",
        "gemini-fake",
        "1.0",
    )
    assert (b.data.params["arm.advisor"], b.data.params["llm_model_used"]) == ("openai", "fake-model-7b-instruct")
    # Each exchange's cost from its tokens and the file's prices (reasoning counted once, at the output price).
    (row_a,), (row_b,) = calls(a), calls(b)
    assert (row_a["prompt_tokens"], row_a["output_tokens"], row_a["thought_tokens"]) == (120, 30, 50)
    assert row_a["cost_usd"] == pytest.approx((120 * 1.0 + 30 * 4.0 + 50 * 2.0) / 1e6)
    assert (row_b["output_tokens"], row_b["thought_tokens"]) == (40, 20)
    assert row_b["cost_usd"] == pytest.approx((200 * 0.5 + 40 * 1.5 + 20 * 1.5) / 1e6)
    assert a.data.metrics["llm_cost_usd"] == pytest.approx(row_a["cost_usd"]) and a.data.metrics["llm_tokens"] == 200
    record = json.loads(mlflow.artifacts.load_text(f"runs:/{a.info.run_id}/advisor/model.json"))
    assert record["key_env"] == "FAKE_A_KEY" and record["price_output"] == 4.0

    out = tmp_path / "cmp"
    assert cli("compare", "--sweep-id", "models1", "--output-dir", out) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(rows) == {"baseline", "losses [fake-a]", "losses [fake-b]"}
    assert float(rows["losses [fake-a]"]["llm_cost_usd"]) == pytest.approx(row_a["cost_usd"])
    assert float(rows["losses [fake-b]"]["llm_cost_usd"]) == pytest.approx(row_b["cost_usd"])
    assert rows["losses [fake-b]"]["baseline"] == "baseline" and rows["losses [fake-b]"]["pairs"] == "2"
    assert (out / "pareto.png").stat().st_size > 10_000
    (cmp,) = [r for r in runs_of(experiment) if r.data.tags.get("role") == "compare"]
    assert "pareto.png" in [f.path for f in mlflow.MlflowClient().list_artifacts(cmp.info.run_id)]
    assert "| losses [fake-a] | 0,1 |" in capfd.readouterr().out

    # The keys: in no param, tag, metric or trace of the store, no artifact file, nor on the console.
    assert not store_holds(KEY_A) and not store_holds(KEY_B)
    root = mlflow.get_experiment_by_name(experiment).artifact_location.removeprefix("file://")
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert any(f.endswith("calls.json") for f in files)
    assert not [f for f in files if KEY_A.encode() in open(f, "rb").read() or KEY_B.encode() in open(f, "rb").read()]
    console = capfd.readouterr()
    assert KEY_A not in console.out + console.err and KEY_B not in console.out + console.err


def test_temperatures_cross_a_provider_model_that_has_no_price(tiny_cifar, experiment, tmp_path, capfd):
    with FakeOpenAI([chat("LR 0.02")]) as s:
        env = s.env()
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            assert (
                cli(
                    "sweep",
                    "--arms",
                    "losses",
                    "--llm-models",
                    "openai:fake-model-7b-instruct",
                    "--temperatures",
                    "0.2,0.9",
                    "--sweep-id",
                    "temps1",
                    "--parallel",
                    2,
                    "--data-dir",
                    tiny_cifar,
                    *TINY,
                    "--experiment",
                    experiment,
                )
                == 0
            )
    assert sorted(r["body"]["temperature"] for r in s.requests if r["body"]) == [0.2, 0.9]
    runs = sorted(runs_of(experiment, filter_string="tags.role = 'arm'"), key=lambda r: r.data.params["temperature"])
    assert [r.info.run_name for r in runs] == [
        "losses-s0 [openai:fake-model-7b-instruct, T=0.2]",
        "losses-s0 [openai:fake-model-7b-instruct, T=0.9]",
    ]
    # No price known: the cost is empty, never 0; tokens are still counted.
    assert all("llm_cost_usd" not in r.data.metrics and r.data.metrics["llm_tokens"] == 135 for r in runs)
    out = tmp_path / "cmp"
    assert cli("compare", "--sweep-id", "temps1", "--output-dir", out) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    # rows are named as their runs are (issue 28: the table said `losses [temperature=0.2]`, the runs `... T=0.2]`)
    assert [r["arm"] for r in rows] == [run.info.run_name.replace("-s0", "") for run in runs]
    assert all(r["llm_cost_usd"] == "" for r in rows)


@pytest.mark.parametrize(
    "text, flags, says",
    [
        ("m:\n  provider: gemini\n  api_key: AIzaSyFAKEFAKE\n", [], "unknown field 'api_key'; valid: provider"),
        (
            "m:\n  provider: gemini\n  key_env: AIzaSyFAKEFAKE\n",
            [],
            "key_env must be the name of an environment variable",
        ),
        ("m:\n  provider: bard\n", [], "provider must be one of gemini, openai"),
        ("m:\n  provider: openai\n  price_input: 1\n", [], "give price_input and price_output together"),
        ("m:\n  provider: openai\n  price_input: -1\n  price_output: 1\n", [], "price_input must be a number >= 0"),
        ("m:\n  provider: openai\n", ["--llm-model", "other"], "llm_model 'other' is not in models file"),
        (
            "m:\n  provider: openai\n",
            ["--llm-model", "bard:x"],
            "give provider:model with provider one of gemini, openai",
        ),
        ("m:\n  provider: openai\n", ["--advisor", "gemini"], "is served by provider openai, but advisor is gemini"),
        ("[1, 2]\n", [], "must map model names to their fields"),
        # YAML keeps a repeated key's last value silently: a second entry or price would change the study unseen
        ("m:\n  provider: openai\nm:\n  provider: gemini\n", [], "at line 3, column 1: the key 'm' is given twice"),
        (
            "m:\n  provider: openai\n  price_input: 1\n  price_output: 2\n  price_input: 9\n",
            [],
            "at line 5, column 3: the key 'price_input' is given twice",
        ),
        ("m:\n  provider: [openai\n", [], "is not valid YAML at line 3, column 1"),
    ],
)
def test_bad_models_files_are_one_line_and_never_echo_a_key(
    text, flags, says, tiny_cifar, experiment, tmp_path, capsys
):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    assert (
        cli(
            "train",
            "--arm",
            "losses",
            "--models",
            path,
            "--llm-model",
            "m",
            *flags,
            "--data-dir",
            tiny_cifar,
            *TINY,
            "--experiment",
            experiment,
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert "AIzaSyFAKEFAKE" not in err[0] and runs_of(experiment) == []
