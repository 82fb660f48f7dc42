"""Does training still wait for the LLM? One LLM arm against a stand-in that answers after D seconds, with advice
sync (the published protocol: every epoch waits for its reply), async and async_step, next to the baseline with no
LLM; each a `lradvisor train` process on digits (bundled, offline) with a private sqlite store. Prints a markdown
table: wall time of the command, seconds in epochs (train + eval), LLM calls and seconds in requests, and the
epochs each reply was applied from.

    python scripts/async_latency.py --delay 3 --epochs 10
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per calls.json read
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the stand-in lives with the tests that use it

from fake_gemini import FakeGemini, reply  # noqa: E402


def train(args, arm, advice, env):
    cmd = [
        sys.executable,
        "-m",
        "lradvisor",
        "train",
        "--arm",
        arm,
        "--advice",
        advice,
        "--dataset",
        "digits",
        "--lr",
        "0.02",
        "--batch-size",
        "16",
        "--subset-ratio",
        str(args.subset_ratio),
        "--epochs",
        str(args.epochs),
        "--experiment",
        "latency",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    import mlflow

    run = mlflow.search_runs(experiment_names=["latency"], output_format="list", order_by=["start_time DESC"])[0]
    m = run.data.metrics
    applied = "—"
    if m.get("llm_calls"):
        table = mlflow.MlflowClient().load_table(
            run.info.experiment_id, "advisor/calls.json", run_ids=[run.info.run_id]
        )
        applied = ", ".join(f"{e}→{'—' if a != a else int(a)}" for e, a in zip(table["epoch"], table["applied_epoch"]))
    return (
        f"| {arm} | {advice if m.get('llm_calls') is not None and arm != 'baseline' else '—'} | {wall:.1f} | "
        f"{m['train_seconds']:.1f} | {m['llm_calls']:.0f} | {m['llm_seconds']:.1f} | {applied} |"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay", type=float, default=3.0, help="seconds the stand-in Gemini takes to answer")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run (the LLM arm asks after each)")
    p.add_argument("--subset-ratio", type=float, default=0.25, help="fraction of digits' training split (tiny epochs)")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="lradvisor-async-")
    uri = f"sqlite:///{tmp}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    print(f"stand-in delay {args.delay:g} s, {args.epochs} epochs of digits at subset {args.subset_ratio:g}\n")
    print("| arm | advice | wall s | epochs s | LLM calls | LLM s | asked after → applied from epoch |")
    print("|---|---|---|---|---|---|---|")
    with FakeGemini([reply("The learning rate should be 0.01.", delay=args.delay)]) as g:
        env = {**os.environ, **g.env(), "MLFLOW_TRACKING_URI": uri}
        print(train(args, "baseline", "sync", env), flush=True)
        for advice in ("sync", "async", "async_step"):
            print(train(args, "losses", advice, env), flush=True)


if __name__ == "__main__":
    main()
