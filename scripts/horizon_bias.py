"""How often does the best action one epoch ahead differ from the best action at the end of the run? Two decision
benchmarks built from the same trajectories (same seeds and settings), one with `--horizon 1`, one with
`--horizon end`, compared state by state: the short-horizon bias of Wu, Ren, Liao & Grosse (ICLR 2018), measured.

    python scripts/horizon_bias.py digits-k1 digits-end [--metric val_acc|test_acc]

Prints a markdown table (per state: the k=1 choice, i.e. its best multiplier of the scheduler's LR, of tied ones the
smallest change; the best ones at the end; the end-horizon regret of the k=1 choice), then in how many states the k=1
choice is not among the best at the end. Reads the benchmarks from the tracking
server in MLFLOW_TRACKING_URI (default: MLflow's ./mlflow.db, as every command).
"""

import argparse
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lradvisor.decisions.build import outcomes_of  # noqa: E402
from lradvisor.decisions.score import benchmark  # noqa: E402


def means(rows, state, metric):
    """{multiplier: mean of metric over the replicates} of a state."""
    return {float(m): v for m, v in outcomes_of(rows, state, metric).items()}


def best(outcomes):
    """The actions whose outcome is the best one (a validation split of 70 images ties often: 1 image = 1.4 points)."""
    top = max(outcomes.values())
    return sorted(m for m, v in outcomes.items() if math.isclose(v, top, abs_tol=1e-9))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("short", help="decisions id of the benchmark built with --horizon 1")
    p.add_argument("end", help="decisions id of the benchmark built with --horizon end, from the same trajectories")
    p.add_argument("--metric", default="val_acc", help="what 'best' means: val_acc (the decision split) or test_acc")
    args = p.parse_args()
    _, states_short, rows_short = benchmark(args.short)
    _, states_end, rows_end = benchmark(args.end)
    common = [s for s in states_short if s in states_end]
    if not common:
        raise SystemExit(f"horizon_bias: {args.short} and {args.end} share no state: build both from the same seeds")
    print(f"| state | best at k=1 | best at the end | end regret of the k=1 choice ({args.metric}, points) |")
    print("|---|---|---|---|")
    differ, regrets = 0, []
    for s in common:
        short, end = means(rows_short, s, args.metric), means(rows_end, s, args.metric)
        choice = min(best(short), key=lambda m: abs(math.log(m)))  # of tied bests, the smallest change of the LR
        regret = max(end.values()) - end[choice]
        differ += choice not in best(end)
        regrets.append(regret)
        print(f"| {s} | ×{choice:g} | {', '.join(f'×{m:g}' for m in best(end))} | {regret:.2f} |")
    print(
        f"\nthe best action one epoch ahead is not among the best at the end in {differ} of {len(common)} states; "
        f"following it costs {statistics.mean(regrets):.2f} points at the end on average ({args.metric})"
    )


if __name__ == "__main__":
    main()
