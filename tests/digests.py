"""Digests of short runs: what each one trained (weights_sha256) and recorded (params, tags, metric histories,
artifacts, the calls table), so that a refactor can be held to "behaviour does not change".

    python tests/digests.py OUT.json [--only NAME,NAME]

runs every case below through the real CLI (in this process; a sweep's children as processes) against a fresh
sqlite store in a temp folder, with stand-in Gemini / OpenAI servers, and writes {case: digest}. It uses only
`lradvisor.cli.main` and MLflow, so that it runs the same against an older checkout of the package
(PYTHONPATH=that checkout): tests/test_digests.py compares the code of now with tests/digests.json, recorded on
the code before the refactor, and where this machine's numerics differ from the recording's (another CPU), with
that older code run here. Everything trains in fp32 with channels_last off: the same on every CPU of a kind.
"""

import json
import math
import os
import subprocess
import sys
import tempfile

# Before torch is imported: the same kernels on every x86 CPU of a kind (AVX2), whatever else it has. With AVX-512
# a CPU computes the same runs in another order of operations, and the digests differ in their last bits.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# 10 training images (subset 0.5 of 20), batch 4: three steps an epoch (4, 4, 2); 10 test images.
TINY = ["--batch-size", "4", "--subset-ratio", "0.5", "--precision", "fp32", "--channels-last", "0"]
# With a validation split: all 20 training images, 1 per class held out.
HELD = ["--batch-size", "4", "--subset-ratio", "1", "--holdout", "0.4", "--precision", "fp32", "--channels-last", "0"]
# What depends on the clock or the machine, not on what was trained.
TIMING = {
    "epoch_seconds",
    "images_per_second",
    "train_seconds",
    "credit_seconds",
    "llm_seconds",
    "llm_retry_seconds",
    "budget_seconds_reference",
}
VOLATILE_TAGS = ("mlflow.source.", "mlflow.user", "mlflow.project.", "mlflow.gitRepoURL")  # prefixes: where it ran from
VOLATILE_CALLS = {"latency_s", "retry_wait_s"}


def cases(data, tmp):
    """name -> (argv, stand-in server script or None). Each case names the feature it pins down."""
    from fake_gemini import reply
    from fake_openai import chat

    schedule = os.path.join(tmp, "schedule.json")
    with open(schedule, "w") as f:
        json.dump({"lr": [0.1, 0.05, 0.02, 0.01]}, f)
    d = ["--data-dir", data]  # relative: a sweep's children's flags, and so their sweep_key, hold it
    return {
        "baseline": (["train", "--arm", "baseline", "--epochs", "4", "--step-size", "2", *TINY, *d], None),
        "cosine": (["train", "--arm", "cosine", "--epochs", "3", *TINY, *d], None),
        "schedule_file": (["train", "--schedule-file", schedule, "--epochs", "4", *TINY, *d], None),
        "per_class_random": (["train", "--arm", "per_class", "--advisor", "random", "--epochs", "4", *TINY, *d], None),
        "random_onecycle": (
            ["train", "--arm", "random_control", "--schedule", "onecycle", "--epochs", "3", *TINY, *d],
            None,
        ),
        "feedback_gemini_sync": (
            ["train", "--arm", "feedback", "--epochs", "4", *TINY, *d],
            ("gemini", [reply("LR 0.05"), reply("The learning rate: 0.5"), reply("no idea"), reply("LR 2")]),
        ),
        "losses_openai_json_sync": (
            [
                "train",
                "--arm",
                "grad_norms",
                "--advisor",
                "openai",
                "--llm-model",
                "fake-model-7b-instruct",
                "--parser",
                "json",
                "--max-factor",
                "2",
                "--every",
                "2",
                "--epochs",
                "4",
                *TINY,
                *d,
            ],
            ("openai", [chat('{"learning_rate": 0.9}'), chat('{"learning_rate": 0.01}')]),
        ),
        "losses_openai_async": (
            [
                "train",
                "--arm",
                "losses",
                "--advisor",
                "openai",
                "--llm-model",
                "fake-model-7b-instruct",
                "--advice",
                "async",
                "--epochs",
                "5",
                *TINY,
                *d,
            ],
            ("openai", [chat("LR 0.05"), chat("LR 0.02")]),
        ),
        "random_async": (["train", "--arm", "random_control", "--advice", "async", "--epochs", "4", *TINY, *d], None),
        "textbook_async_step": (
            ["train", "--arm", "textbook_control", "--advice", "async_step", "--epochs", "4", *TINY, *d],
            None,
        ),
        "guard_rollback": (
            [
                "train",
                "--arm",
                "losses",
                "--guard",
                "rollback",
                "--guard-factor",
                "1.01",
                "--lr",
                "0.01",
                "--momentum",
                "0.99",
                "--epochs",
                "3",
                *TINY,
                *d,
            ],
            ("gemini", [reply("The learning rate should be 0.9.")]),
        ),
        "credit": (
            ["train", "--arm", "random_control", "--credit-epochs", "1", "--lr", "0.02", "--epochs", "3", *HELD, *d],
            None,
        ),
        "holdout_plateau": (["train", "--arm", "plateau", "--epochs", "4", *HELD, *d], None),
        "per_class_holdout_gemini": (
            ["train", "--arm", "per_class", "--epochs", "3", "--credit-epochs", "1", *HELD, *d],
            ("gemini", [reply("LR 0.03"), reply("LR 0.2")]),
        ),
        # replays: of the Gemini run above (sync), and of a recorded async_step exchange that landed mid-epoch
        "replay_sync": (
            [
                "train",
                "--arm",
                "feedback",
                "--advisor",
                "replay",
                "--replay-run-id",
                "{feedback_gemini_sync}",
                "--epochs",
                "4",
                *TINY,
                *d,
            ],
            None,
        ),
        "replay_async_step": (
            [
                "train",
                "--arm",
                "losses",
                "--advisor",
                "replay",
                "--replay-run-id",
                "{recorded}",
                "--advice",
                "async_step",
                "--epochs",
                "4",
                *TINY,
                *d,
            ],
            None,
        ),
        "search_tpe": (
            [
                "search",
                "--method",
                "tpe",
                "--budget-epochs",
                "6",
                "--epochs",
                "2",
                "--seeds",
                "0",
                "--search-id",
                "digest",
                "--storage",
                "sqlite:///" + os.path.join(tmp, "optuna.db"),
                "--lr",
                "0.05",
                "--pruner",
                "median",
                *HELD,
                *d,
            ],
            None,
        ),
        "sweep": (
            [
                "sweep",
                "--arms",
                "baseline,textbook_control",
                "--seeds",
                "0",
                "--epochs",
                "2",
                "--sweep-id",
                "digest",
                *TINY,
                *d,
            ],
            None,
        ),
    }


def recorded_async_step_run(client, exp_id):
    """A finished run whose calls table says: the reply to the prompt after epoch 1 was applied from global batch 5
    (mid epoch 2), the one after epoch 3 never (in flight at the end): what a replay under async_step follows."""
    run = client.create_run(exp_id, run_name="recorded-async-step")
    client.log_param(run.info.run_id, "advice", "async_step")
    rows = [
        {
            "epoch": 1,
            "applied_epoch": 2,
            "applied_step": 5,
            "model": "m",
            "prompt": "p",
            "reply": "LR 0.05",
            "reason": "accepted",
            "finish_reason": "stop",
        },
        {
            "epoch": 3,
            "applied_epoch": None,
            "applied_step": None,
            "model": "m",
            "prompt": "p",
            "reply": "LR 0.3",
            "reason": "not applied",
            "finish_reason": "stop",
        },
    ]
    client.log_table(run.info.run_id, {k: [r[k] for r in rows] for k in rows[0]}, artifact_file="advisor/calls.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def clean(value):
    """JSON-comparable: NaN as a string (NaN != NaN), everything else as it is."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def artifacts(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return sorted(out)


def digest(client, run, words):
    """What a run trained and recorded, with the ids and paths of this sitting replaced by words (`words`)."""
    import mlflow

    rid = run.info.run_id

    def scrub(v):
        if isinstance(v, str):
            for old, word in words.items():
                v = v.replace(old, word)
        elif isinstance(v, dict):
            v = {k: scrub(x) for k, x in v.items()}
        elif isinstance(v, list):
            v = [scrub(x) for x in v]
        return clean(v)

    metrics = {}
    for key in sorted(run.data.metrics):
        if key not in TIMING:
            hist = sorted(client.get_metric_history(rid, key), key=lambda m: (m.step, m.timestamp))
            metrics[key] = [[m.step, clean(m.value)] for m in hist]
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith(VOLATILE_TAGS)}
    if "trial" in tags and tags.get("role") == "member":  # Ray Tune's trial ids are drawn anew every time
        tags["trial"] = "<trial>"
    files = artifacts(client, rid)
    calls = None
    if "advisor/calls.json" in files:
        table = mlflow.artifacts.load_dict(f"runs:/{rid}/advisor/calls.json")
        calls = [{k: v for k, v in zip(table["columns"], row) if k not in VOLATILE_CALLS} for row in table["data"]]
    texts = {
        f: mlflow.artifacts.load_text(f"runs:/{rid}/{f}")
        for f in files  # prompts and replies byte for byte
        if f.startswith("advisor/epoch_") and f.endswith((".txt", ".html"))
    }
    return scrub(
        {
            "name": run.info.run_name,
            "status": run.info.status,
            "params": dict(sorted(run.data.params.items())),
            "tags": dict(sorted(tags.items())),
            "metrics": metrics,
            "artifacts": [f for f in files if not f.endswith(".log")],
            "calls": calls,
            "texts": texts,
        }
    )


def record(out, only=None):
    import contextlib

    import atexit
    import shutil

    tmp = tempfile.mkdtemp(prefix="lradvisor-digests-")
    atexit.register(shutil.rmtree, tmp, True)  # this process works in it to the end; gone when it exits
    data = os.path.join(tmp, "data")
    subprocess.run(
        [
            sys.executable,
            os.path.join(os.path.dirname(HERE), "scripts", "make_fake_cifar.py"),
            "--out",
            data,
            "--train-per-class",
            "2",
            "--test-per-class",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    # the working folder of every run: relative paths (data) and MLflow's defaults land in it
    os.chdir(tmp)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "OPENAI_BASE_URL", "OPENAI_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
        os.environ.pop(k, None)
    import mlflow

    from lradvisor.cli import main

    from fake_gemini import FakeGemini
    from fake_openai import FakeOpenAI

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    all_cases = cases("data", tmp)
    names, result = {}, {}
    for name, (argv, server) in all_cases.items():
        if only and name not in only:
            continue
        experiment = f"digest-{name}"
        exp_id = client.get_experiment_by_name(experiment)
        exp_id = exp_id.experiment_id if exp_id else client.create_experiment(experiment)
        ids = {**{k.removeprefix("run:"): v for k, v in names.items() if k.startswith("run:")}}
        if "{recorded}" in argv:
            ids["recorded"] = recorded_async_step_run(client, exp_id)
            names[ids["recorded"]] = "<run:recorded>"
        argv = [a.format(**ids) if "{" in a else a for a in argv]
        stand_in = (
            {"gemini": FakeGemini, "openai": FakeOpenAI}[server[0]](server[1]) if server else contextlib.nullcontext()
        )
        with stand_in as s:
            env = s.env() if s else {}
            os.environ.update(env)
            code = main([*argv, "--experiment", experiment])
            for k in env:
                os.environ.pop(k)
        runs = client.search_runs([exp_id], "", max_results=1000, order_by=["start_time ASC"])
        runs = [r for r in runs if r.info.run_name != "recorded-async-step"]
        for r in runs:
            names[r.info.run_id] = f"<run:{r.info.run_name}>"
        if len(runs) == 1:
            names[f"run:{name}"] = runs[0].info.run_id
        words = {tmp: "<tmp>", **{k: w for k, w in names.items() if not k.startswith("run:")}}
        result[name] = {"exit": code, "runs": {r.info.run_name: digest(client, r, words) for r in runs}}
        print(f"digests: {name}: exit {code}, {len(runs)} runs", file=sys.stderr, flush=True)
    with open(out, "w") as f:
        json.dump({"machine": machine(), "cases": result}, f, indent=1, sort_keys=True)


def machine():
    """What the numbers depend on besides the code: where it differs from a recording's, so may the digests."""
    import platform

    import torch

    return {
        "cpu": cpu(),
        "torch": torch.__version__,
        "arch": platform.machine(),
        "kernels": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": torch.get_num_threads(),
    }


def cpu():
    """The processor's vendor and model: CPUs with the same kernels (AVX2 here) still differ in the last bits."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0].splitlines()
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first if ":" in line)}
        return f"{info['vendor_id']} family {info['cpu family']} model {info['model']}: {info['model name']}"
    except (OSError, KeyError):
        import platform

        return platform.processor() or "unknown"


if __name__ == "__main__":
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    record(os.path.abspath(sys.argv[1]), only)
