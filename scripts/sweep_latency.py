"""How much of a sweep's wall time is waiting for the LLM, and how much is fixed per-run overhead?

Runs K LLM arms against a stand-in Gemini (a real generateContent server on 127.0.0.1, tests/fake_gemini.py)
that answers after D seconds, first one at a time (parallel=1), then all at once (parallel=K), each through
`lradvisor sweep` with a private sqlite tracking store. Prints one JSON line per sweep:

    wall_s                 the sweep command, start to exit
    per_run_overhead_s     mean over its runs of (run wall time - training/eval seconds - LLM seconds): the
                           process start, imports, data load, model set-up and MLflow calls of one run
    llm_wait_s, train_s    means per run: the exchanges' latencies (calls table) and epoch_seconds

    python scripts/sweep_latency.py --arms losses,lr_history,grad_norms --delay 3 --epochs 4
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the stand-in lives with the tests that use it

from fake_gemini import FakeGemini, reply  # noqa: E402


def sweep(args, parallel, env, sweep_id):
    cmd = [
        sys.executable,
        "-m",
        "lradvisor",
        "sweep",
        "--arms",
        args.arms,
        "--seeds",
        "0",
        "--parallel",
        str(parallel),
        "--sweep-id",
        sweep_id,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "20",
        "--subset-ratio",
        str(args.subset_ratio),
        "--data-dir",
        args.data_dir,
        "--experiment",
        "latency",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=["latency"],
        output_format="list",
        filter_string=f"tags.sweep_id = '{sweep_id}' and tags.role = 'arm'",
    )
    assert len(runs) == len(args.arms.split(",")), f"sweep {sweep_id} made {len(runs)} runs"
    client = mlflow.MlflowClient()

    def seconds(r):  # from what every version of lradvisor records: epoch_seconds and the calls table
        train = sum(m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds"))
        table = client.load_table(r.info.experiment_id, "advisor/calls.json", run_ids=[r.info.run_id])
        return (r.info.end_time - r.info.start_time) / 1000, train, float(table["latency_s"].sum())

    per_run = [seconds(r) for r in runs]
    mean = lambda xs: round(sum(xs) / len(xs), 2)  # noqa: E731
    return {
        "parallel": parallel,
        "arms": args.arms,
        "delay_s": args.delay,
        "epochs": args.epochs,
        "wall_s": round(wall, 1),
        "runs": len(runs),
        "per_run_overhead_s": mean([w - t - q for w, t, q in per_run]),
        "run_wall_s": mean([w for w, _, _ in per_run]),
        "train_s": mean([t for _, t, _ in per_run]),
        "llm_wait_s": mean([q for _, _, q in per_run]),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default="losses,lr_history,grad_norms", help="LLM arms to sweep (K = how many)")
    p.add_argument("--delay", type=float, default=3.0, help="seconds the stand-in takes to answer")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (an LLM arm asks after all but the last)")
    p.add_argument("--subset-ratio", type=float, default=0.25, help="fraction of the synthetic training set")
    p.add_argument("--data-dir", default="", help="CIFAR-10 folder; default: a synthetic one made for this run")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="lradvisor-latency-")
    if not args.data_dir:
        args.data_dir = os.path.join(tmp, "data")
        subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "scripts", "make_fake_cifar.py"),
                "--out",
                args.data_dir,
                "--train-per-class",
                "8",
                "--test-per-class",
                "4",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    uri = f"sqlite:///{tmp}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    with FakeGemini([reply("The learning rate should be 0.05.", delay=args.delay)]) as g:
        env = {**os.environ, **g.env(), "MLFLOW_TRACKING_URI": uri}
        k = len(args.arms.split(","))
        for parallel in (1, k):
            print(json.dumps(sweep(args, parallel, env, f"p{parallel}")), flush=True)


if __name__ == "__main__":
    main()
