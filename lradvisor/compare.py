"""Compare finished runs from the tracking server: the published results table (with more columns) and
overlay plots of each LLM arm against the baseline, mean and min-max band over seeds.

Everything is read back from MLflow (any server, or the embedded default) and written to --output-dir,
then logged as the artifacts of a `compare` run in the same experiment.
"""

import csv
import math
import os
import statistics
import sys

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import tracking
from lradvisor.arms import ARMS, UsageError
from lradvisor.data import CLASSES

CURVES = [("lr", "learning rate", True), ("train_loss", "training loss", False),
          ("test_acc", "test accuracy (%)", False), ("grad_norm", "gradient norm", False)]


def find_runs(args):
    client = MlflowClient()
    finished = "attributes.status = 'FINISHED'"
    if args.run_ids:
        runs = []
        for run_id in [r.strip() for r in args.run_ids.split(",") if r.strip()]:
            try:
                runs.append(client.get_run(run_id))
            except mlflow.exceptions.MlflowException:
                raise UsageError(f"no run {run_id!r} on {mlflow.get_tracking_uri()}") from None
        runs = [r for r in runs if r.info.status == "FINISHED"]
    elif args.sweep_id:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exp_ids, f"tags.sweep_id = '{args.sweep_id}' and {finished}", max_results=5000)
    elif args.experiment:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise UsageError(f"no experiment named {args.experiment!r} on {mlflow.get_tracking_uri()}")
        runs = client.search_runs([exp.experiment_id], finished, max_results=5000)
    else:
        raise UsageError("say what to compare: --sweep-id ID, --experiment NAME or --run-ids ID,ID,...")
    return [r for r in runs if "arm" in r.data.tags]  # training runs only, not sweep or compare runs


def collect(runs):
    """arm -> list of per-run dicts: seed, run_id, curves {key: [values by epoch]}, final class accuracies."""
    client = MlflowClient()
    by_arm = {}
    for r in sorted(runs, key=lambda r: (r.data.tags["arm"], r.data.params.get("seed", ""))):
        curves = {}
        for key in [k for k, _, _ in CURVES] + ["advisor_accepted"]:
            hist = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
            curves[key] = [m.value for m in hist]
        by_arm.setdefault(r.data.tags["arm"], []).append({
            "seed": r.data.params.get("seed", "?"), "run_id": r.info.run_id, "curves": curves,
            "class_acc": {c: r.data.metrics.get(f"class_acc/{c}", math.nan) for c in CLASSES}})
    order = [a for a in ARMS if a in by_arm] + sorted(a for a in by_arm if a not in ARMS)
    return {a: by_arm[a] for a in order}


def table(by_arm, baseline):
    rows = []
    base = by_arm.get(baseline)
    base_mean = statistics.mean(r["curves"]["test_acc"][-1] for r in base) if base else None
    for arm, runs in by_arm.items():
        finals = [r["curves"]["test_acc"][-1] for r in runs]
        mean = statistics.mean(finals)
        rows.append({
            "arm": arm, "seeds": ",".join(r["seed"] for r in runs), "runs": len(runs),
            "epochs": ",".join(sorted({str(len(r["curves"]["test_acc"])) for r in runs})),
            "final_test_acc_mean": mean, "final_test_acc_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "delta_vs_baseline": None if base_mean is None or arm == baseline else mean - base_mean,
            "llm_calls": statistics.mean(len(r["curves"]["advisor_accepted"]) for r in runs),
            "accepted": statistics.mean(sum(r["curves"]["advisor_accepted"]) for r in runs),
            "lowest_lr": min(min(r["curves"]["lr"]) for r in runs)})
    return rows


def _num(x):
    return f"{x:g}" if x == int(x) else f"{x:.1f}"


def markdown(rows, baseline):
    lines = [f"| arm | seeds | final test acc (%) | Δ vs {baseline} (points) | LLM calls | accepted | lowest LR |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['final_test_acc_mean']:.2f}" + (f" ± {r['final_test_acc_std']:.2f}" if r["runs"] > 1 else "")
        delta = "—" if r["delta_vs_baseline"] is None else f"{r['delta_vs_baseline']:+.2f}"
        lines.append(f"| {r['arm']} | {r['seeds']} | {acc} | {delta} | {_num(r['llm_calls'])} | "
                     f"{_num(r['accepted'])} | {r['lowest_lr']:.3g} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Figures

def _band(ax, runs, key, label, color):
    n = max(len(r["curves"][key]) for r in runs)
    steps = list(range(1, n + 1))
    cols = [[r["curves"][key][i] for r in runs if i < len(r["curves"][key])] for i in range(n)]
    ax.plot(steps, [statistics.mean(c) for c in cols], label=label, color=color, lw=1.8)
    if len(runs) > 1:
        ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], color=color, alpha=0.2, lw=0)


def curves_figure(by_arm, arms, path, title, baseline):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    known = list(ARMS) + sorted(a for a in by_arm if a not in ARMS)  # one colour per arm in every figure
    for ax, (key, label, log) in zip(axes.flat, CURVES):
        for arm in arms:
            color = "black" if arm == baseline else plt.get_cmap("tab10")(known.index(arm) % 10)
            _band(ax, by_arm[arm], key, arm, color)
        ax.set(title=label, xlabel="epoch", yscale="log" if log else "linear")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title + " (mean over seeds, band = min-max)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heatmap(by_arm, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = list(by_arm)
    grid = [[statistics.mean(r["class_acc"][c] for r in by_arm[a]) for c in CLASSES] for a in arms]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(arms)), dpi=100)
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set(xticks=range(len(CLASSES)), xticklabels=CLASSES, yticks=range(len(arms)), yticklabels=arms,
           title="final per-class test accuracy (%)")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args):
    runs = find_runs(args)
    what = (f"sweep {args.sweep_id}" if args.sweep_id else f"experiment {args.experiment}" if args.experiment
            else "the given runs")
    if not runs:
        print(f"lradvisor compare: no finished training runs in {what} on {mlflow.get_tracking_uri()}; nothing to compare",
              file=sys.stderr)
        return 1
    by_arm = collect(runs)
    if args.baseline not in by_arm:
        print(f"note: no finished {args.baseline!r} run in {what}: no Δ column and no overlays against it", file=sys.stderr)
    epochs = {arm: sorted({len(r["curves"]["test_acc"]) for r in rs}) for arm, rs in by_arm.items()}
    if len({e for es in epochs.values() for e in es}) > 1:
        print("note: the runs trained for different numbers of epochs ("
              + ", ".join(f"{a}: {'/'.join(map(str, e))}" for a, e in epochs.items()) + "); final accuracies are not like for like",
              file=sys.stderr)

    os.makedirs(args.output_dir, exist_ok=True)
    rows = table(by_arm, args.baseline)
    md = markdown(rows, args.baseline)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.output_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if args.baseline in by_arm:
        for arm in by_arm:
            if arm != args.baseline:
                curves_figure(by_arm, [args.baseline, arm], os.path.join(args.output_dir, f"overlay_{arm}.png"),
                              f"{arm} vs {args.baseline}", args.baseline)
    curves_figure(by_arm, list(by_arm), os.path.join(args.output_dir, "overview.png"), "all arms", args.baseline)
    heatmap(by_arm, os.path.join(args.output_dir, "class_heatmap.png"))
    print(md)

    exp_id = runs[0].info.experiment_id
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_id=exp_id)
    run = tracking.open_run(None, run_name=f"compare-{args.sweep_id or 'runs'}")
    try:
        mlflow.set_tags({"role": "compare", "sweep_id": args.sweep_id, "compared_runs": len(runs)})
        mlflow.log_artifacts(args.output_dir)
    except BaseException as e:
        tracking.end_failed("FAILED", f"{type(e).__name__}: {e}", e)
        raise
    mlflow.end_run("FINISHED")
    print(f"wrote {args.output_dir}/ and logged it to run {run.info.run_id}")
    return 0
