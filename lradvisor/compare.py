"""Compare finished runs from the tracking server: the results table with paired statistics against the
baseline, overlay plots of each arm against it (mean and min-max band over seeds), a forest plot of the
differences, a per-class heatmap, and, for runs with credit on, each decision's credit against its branch.

Runs are grouped by arm *and* configuration: runs of one arm that differ in any training parameter other than
the seed are separate rows, named by what differs (`baseline [step_size=1]`). The data set is part of the
configuration, so rows never pool data sets and each row is paired with a baseline of its own data set; with
several data sets, a `pooled` row per arm combines its per-data-set Δ by random effects (stats.pooled).
Everything is read back from MLflow (any server, or the embedded default), written to --output-dir, and logged
as the artifacts of a `compare` run in the same experiment: exactly the files this compare wrote, and the ids
of the runs it read.
"""

import csv
import glob
import math
import os
import re
import statistics
import sys

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import stats, tracking
from lradvisor.arms import ARMS, UsageError, check_id
from lradvisor.datasets import DATASETS
from lradvisor.figures import CURVES, credit, curves_figure, forest, heatmap, pareto, styles
from lradvisor.tracking import CLASS_TABLE, TABLE

# Params that say where or how a run was recorded, not what it trained: runs differing only in these are
# seeds of one configuration. (A replay's source run differs per seed by construction; the models file is where an
# entry was read, and the entry's model is in llm_model_used.)
NOT_CONFIG = {"seed", "device_name", "torch_version", "replay_run_id", "models"}
# What follows from llm_model (which provider serves it, the name sent on the wire): not repeated in row labels.
FROM_LLM_MODEL = {"arm.advisor", "llm_model_used"}
BUDGET = ("llm_calls", "llm_failed_calls", "llm_tokens", "llm_cost_usd", "llm_seconds", "llm_retry_seconds",
          "train_seconds", "credit_seconds", "advisor_changes", "search_epochs")
# The files a compare writes; an earlier compare's are removed from output_dir first, nothing else is touched.
OURS = ("results.md", "results.csv", "overview.png", "class_heatmap.png", "forest.png", "credit.png", "pareto.png",
        "overlay_*.png")


def find_runs(args):
    client = MlflowClient()
    finished = "attributes.status = 'FINISHED'"
    if args.run_ids:
        runs, ids = [], [check_id(r.strip(), "run id") for r in args.run_ids.split(",") if r.strip()]
        for run_id in ids:
            try:
                runs.append(client.get_run(run_id))
            except mlflow.exceptions.MlflowException:
                raise UsageError(f"no run {run_id!r} on {mlflow.get_tracking_uri()}") from None
        runs = [r for r in runs if r.info.status == "FINISHED"]
    elif args.sweep_id:
        check_id(args.sweep_id, "sweep_id")
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exp_ids, f"tags.sweep_id = {tracking.quote(args.sweep_id)} and {finished}",
                                  max_results=5000)
    elif args.experiment:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise UsageError(f"no experiment named {args.experiment!r} on {mlflow.get_tracking_uri()}")
        runs = client.search_runs([exp.experiment_id], finished, max_results=5000)
    else:
        raise UsageError("say what to compare: --sweep-id ID, --experiment NAME or --run-ids ID,ID,...")
    # Training runs only: not sweep, search or compare runs, nor a search's trials and PBT members (they select the
    # winner on a validation split; the winner's own runs, role arm, are the row).
    return [r for r in runs if "arm" in r.data.tags and r.data.tags.get("role") not in ("trial", "member")]


def config_of(run):
    config = {k: v for k, v in run.data.params.items() if k not in NOT_CONFIG}
    config.setdefault("dataset", "cifar10")  # runs from before data sets were a parameter trained on CIFAR-10
    config.setdefault("advice", "sync")  # ... and before advice was one, waited for every reply
    return tuple(sorted(config.items()))


def task_settings(configs):
    """With several data sets: the parameters that are one value per data set (lr 0.02 on digits, 0.1 on
    CIFAR-10, or data_dir) are the task's settings, named by `dataset` alone in row labels and set aside when an
    arm's rows are pooled across data sets."""
    by_ds = {}
    for c in configs:
        by_ds.setdefault(c["dataset"], []).append(c)
    if len(by_ds) < 2:
        return set()
    keys = {k for c in configs for k in c} - {"dataset"}
    return {k for k in keys if all(len({c.get(k) for c in cs}) == 1 for cs in by_ds.values())}


def group(runs):
    """label -> runs of one arm and one configuration. The label is the arm, plus what differs from the
    arm's other configurations when it has several."""
    by_arm = {}
    for r in runs:
        by_arm.setdefault(r.data.tags["arm"], {}).setdefault(config_of(r), []).append(r)
    order = [a for a in ARMS if a in by_arm] + sorted(a for a in by_arm if a not in ARMS)
    tied = task_settings([dict(c) for configs in by_arm.values() for c in configs])
    groups = {}
    for arm in order:
        configs = by_arm[arm]
        varying = sorted({k for c in configs for k, v in c
                          if k not in tied and any(dict(o).get(k) != v for o in configs)})
        if "llm_model" in varying:  # `losses [fake-a]`: the model by its name, first
            varying = ["llm_model"] + [k for k in varying if k not in FROM_LLM_MODEL | {"llm_model"}]
        for config, members in sorted(configs.items()):
            d = dict(config)
            shown = [d.get(k, "") if k == "llm_model" else f"{k}={d.get(k, '')}" for k in varying]
            label = arm + (" [" + ", ".join(shown) + "]" if varying else "")
            groups[label] = {"arm": arm, "dataset": d["dataset"], "config": d, "runs": members,
                             # what the pooled row matches across data sets: all but the data set's own settings
                             "pool_key": (arm, tuple((k, v) for k, v in config if k not in tied | {"dataset"}))}
    order = list(DATASETS)  # rows of one data set together, in the registry's order
    return dict(sorted(groups.items(), key=lambda kv: (order.index(kv[1]["dataset"]) if kv[1]["dataset"] in order
                                                        else len(order), kv[1]["dataset"])))


def collect(groups):
    """Per run: seed, run_id, curves {key: [values by epoch]}, final class accuracies, budget, whether its
    decisions saw the test set, and the credit of each decision. One run per seed (the latest, when a seed was
    run twice with the same configuration)."""
    client = MlflowClient()
    notes = []
    for label, g in groups.items():
        latest = {}
        for r in sorted(g["runs"], key=lambda r: r.info.start_time):
            latest[r.data.params.get("seed", "?")] = r
        if len(latest) < len(g["runs"]):
            notes.append(f"{label}: {len(g['runs']) - len(latest)} repeated seed(s); the latest run of each is used")
        g["seeds"] = []
        for seed, r in sorted(latest.items(), key=lambda kv: (len(kv[0]), kv[0])):
            curves = {}
            for key in [k for k, _, _ in CURVES] + ["advisor_accepted", "advisor_proposed_lr"]:
                hist = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
                curves[key] = [m.value for m in hist]
                curves[key + "_steps"] = [m.step for m in hist]
            g["seeds"].append({
                "seed": seed, "run_id": r.info.run_id, "curves": curves,
                "class_acc": class_acc_of(r, g["dataset"]),
                "budget": {k: r.data.metrics.get(k) for k in BUDGET},
                "cost_partial": "llm_cost_unknown" in r.data.tags,
                "saw_test": r.data.tags.get("decisions_saw_test", "?"),  # "?": recorded before the tag existed
                "credits": credits_of(r)})
    return notes


def class_acc_of(run, dataset):
    """Final per-class test accuracy: its metrics, or for data sets with many classes the last epoch's rows of
    its class table; nan where neither exists."""
    classes = DATASETS[dataset]["classes"] if dataset in DATASETS else ()
    acc = {c: run.data.metrics.get(f"class_acc/{c}", math.nan) for c in classes}
    if classes and all(math.isnan(v) for v in acc.values()) and len(classes) > tracking.CLASS_METRICS:
        try:
            table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{CLASS_TABLE}")
        except Exception:  # an unfinished record: the heatmap shows a gap
            return acc
        rows = [dict(zip(table["columns"], values)) for values in table["data"]]
        last = max(r["epoch"] for r in rows)
        acc.update({r["class"]: r["test_acc"] for r in rows if r["epoch"] == last})
    return acc


def credits_of(run):
    """The decisions of a run with credit on that have one: [{epoch, credit_acc, credit_loss}] from its calls table."""
    if run.data.params.get("credit_epochs", "0") == "0" or not run.data.metrics.get("llm_calls"):
        return []
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{TABLE}")  # log_table's "split" layout
    rows = [dict(zip(table["columns"], values)) for values in table["data"]]
    return [{k: r[k] for k in ("epoch", "credit_acc", "credit_loss")} for r in rows
            if r.get("credit_acc") is not None and math.isfinite(r["credit_acc"])]


def saw_test(g):
    """A row's decisions_saw_test: 1, 0, mixed, or ? (runs recorded before lradvisor tagged it)."""
    seen = {s["saw_test"] for s in g["seeds"]}
    return seen.pop() if len(seen) == 1 else "mixed"


def pick_baselines(groups, baseline):
    """label -> label of the baseline group it is measured against (None if there is none). `baseline` names an
    arm or a row label; with several baseline configurations each row gets the one differing from it least."""
    if baseline in groups:  # one row: the baseline of its own data set's rows
        return {label: baseline if g["dataset"] == groups[baseline]["dataset"] else None
                for label, g in groups.items()}, []
    pairs, notes = {}, []
    for label, g in groups.items():
        candidates = [b for b, h in groups.items() if h["arm"] == baseline and h["dataset"] == g["dataset"]]
        def distance(b):
            base = groups[b]["config"]
            return sum(1 for k in base if k in g["config"] and g["config"][k] != base[k])
        ranked = sorted(candidates, key=distance)
        if len(ranked) > 1 and distance(ranked[0]) == distance(ranked[1]) and label not in candidates:
            notes.append(f"{label}: several {baseline!r} configurations fit equally; give --baseline one of: "
                         + "; ".join(candidates))
            pairs[label] = None
        else:
            pairs[label] = ranked[0] if ranked else None
    return pairs, notes


def table(groups, pairs, margin, credit_margin):
    rows = []
    for label, g in groups.items():
        finals = {s["seed"]: s["curves"]["test_acc"][-1] for s in g["seeds"]}
        base_label = pairs.get(label)
        base = {s["seed"]: s["curves"]["test_acc"][-1] for s in groups[base_label]["seeds"]} if base_label else {}
        vals = list(finals.values())
        row = {"arm": label, "dataset": g["dataset"], "seeds": ",".join(finals), "runs": len(finals),
               "epochs": ",".join(sorted({str(len(s["curves"]["test_acc"])) for s in g["seeds"]})),
               "final_test_acc_mean": statistics.mean(vals),
               "final_test_acc_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
               "decisions_saw_test": saw_test(g), "baseline": base_label or "", "pairs": 0, "unpaired_seeds": "",
               "delta_vs_baseline": None, "delta_se": None, "delta_ci_low": None, "delta_ci_high": None,
               "p_value": None, "verdict": "", "tau2": None}
        if base_label and base_label != label:
            paired = [s for s in finals if s in base]
            row["unpaired_seeds"] = ",".join([f"{s} (no {base_label})" for s in finals if s not in base]
                                             + [f"{s} (only {base_label})" for s in base if s not in finals])
            test = stats.paired([finals[s] for s in paired], [base[s] for s in paired], margin)
            row.update(pairs=len(paired), **test)
        for key in BUDGET:
            got = [s["budget"][key] for s in g["seeds"] if s["budget"][key] is not None]
            row[key] = statistics.mean(got) if got else None
        # A cost is only a cost when every run has one (a model with no price has none, never 0); partial: some
        # exchange of a run said no token counts (in flight at the end, or no reply), and is not in its sum.
        if any(s["budget"]["llm_cost_usd"] is None for s in g["seeds"]):
            row["llm_cost_usd"] = None
        row["llm_cost_partial"] = any(s["cost_partial"] for s in g["seeds"])
        row["accepted"] = statistics.mean(sum(s["curves"]["advisor_accepted"]) for s in g["seeds"])
        row["changes"] = row.pop("advisor_changes")  # next to accepted: how many accepted answers moved the LR
        row["lowest_lr"] = min(min(s["curves"]["lr"]) for s in g["seeds"])
        # Credit: every decision of the row's runs that moved the LR, against its branch (accuracy points).
        credits = [c["credit_acc"] for s in g["seeds"] for c in s["credits"]]
        mean, low, high = stats.mean_ci(credits)
        row.update(n_decisions=len(credits), credit_mean=mean, credit_ci_low=low, credit_ci_high=high,
                   helped=sum(c > credit_margin for c in credits), hurt=sum(c < -credit_margin for c in credits),
                   neutral=sum(abs(c) <= credit_margin for c in credits))
        rows.append(row)
    return rows + pooled_rows(groups, rows, margin)


def pooled_rows(groups, rows, margin):
    """Per arm (and configuration apart from the data set) measured on two or more data sets: one row whose Δ
    pools the per-data-set Δs by random effects. Data sets where Δ has no spread (fewer than 2 pairs, or
    every pair the same) cannot be weighed and are left out; it says which are in the row's `seeds`."""
    if len({g["dataset"] for g in groups.values()}) < 2:
        return []
    by_config = {}
    for row, g in zip(rows, groups.values()):
        by_config.setdefault(g["pool_key"], []).append(row)
    out = []
    for members in by_config.values():
        usable = [r for r in members if r["delta_se"]]
        if len(usable) < 2:
            continue
        label = re.sub(r"\s*\[\]$", "", re.sub(r"dataset=[^,\]]*(, )?", "", members[0]["arm"]).replace(", ]", "]"))
        row = {k: None for k in members[0]}
        row.update(arm=label, dataset="pooled", seeds=" + ".join(r["dataset"] for r in usable),
                   runs=sum(r["runs"] for r in usable), pairs=sum(r["pairs"] for r in usable),
                   epochs=",".join(sorted({e for r in usable for e in r["epochs"].split(",")})),
                   decisions_saw_test=({r["decisions_saw_test"] for r in usable}.pop()
                                       if len({r["decisions_saw_test"] for r in usable}) == 1 else "mixed"),
                   baseline=" + ".join(r["baseline"] for r in usable), unpaired_seeds="", n_decisions=0,
                   **stats.pooled([r["delta_vs_baseline"] for r in usable], [r["delta_se"] for r in usable], margin))
        out.append(row)
    return out


def _f(x, fmt):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


SAW_TEST = " †"  # marks a row whose decisions read test-set numbers


HEADER = ["| arm | seeds | final test acc (%) | Δ vs baseline (points) | 95 % CI | p | verdict | "
          "LLM calls | failed | accepted | changes | LLM tokens | LLM cost $ | LLM s | retry waits s | train s | search epochs | lowest LR |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def _line(r):
    acc = f"{r['final_test_acc_mean']:.2f}" + (f" ± {r['final_test_acc_std']:.2f}" if r["runs"] > 1 else "")
    ci = "—" if r["delta_ci_low"] is None else f"[{r['delta_ci_low']:+.2f}, {r['delta_ci_high']:+.2f}]"
    arm = r["arm"] + (SAW_TEST if r["decisions_saw_test"] in ("1", "mixed") else "")
    return (f"| {arm} | {r['seeds']} | {acc} | {_f(r['delta_vs_baseline'], '+.2f')} | {ci} | "
            f"{_f(r['p_value'], '.3g')} | {r['verdict'] or '—'} | {_f(r['llm_calls'], 'g')} | {_f(r['llm_failed_calls'], 'g')} | "
            f"{_f(r['accepted'], 'g')} | {_f(r['changes'], 'g')} | {_f(r['llm_tokens'], '.0f')} | "
            f"{'≥ ' if r['llm_cost_partial'] and r['llm_cost_usd'] is not None else ''}{_f(r['llm_cost_usd'], '.3g')} | "
            f"{_f(r['llm_seconds'], '.1f')} | {_f(r['llm_retry_seconds'], '.1f')} | {_f(r['train_seconds'], '.1f')} | "
            f"{_f(r['search_epochs'], '.0f')} | {r['lowest_lr']:.3g} |")


def markdown(rows, margin, credit_margin=0.1):
    """The results table; with several data sets one table per data set, then the pooled rows."""
    tasks = [r for r in rows if r["dataset"] != "pooled"]
    datasets = list(dict.fromkeys(r["dataset"] for r in tasks))
    lines = []
    for ds in datasets:
        if len(datasets) > 1:
            lines += [f"### data set: {ds}", ""]
        lines += HEADER + [_line(r) for r in tasks if r["dataset"] == ds] + ([""] if len(datasets) > 1 else [])
    pooled = [r for r in rows if r["dataset"] == "pooled"]
    if pooled:
        lines += ["### pooled over data sets (random effects)", "",
                  "| arm | data sets | pairs | Δ vs baseline (points) | 95 % CI | p | verdict | τ² |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in pooled:
            lines.append(f"| {r['arm']}{SAW_TEST if r['decisions_saw_test'] in ('1', 'mixed') else ''} | {r['seeds']} | "
                         f"{r['pairs']} | {r['delta_vs_baseline']:+.2f} | [{r['delta_ci_low']:+.2f}, "
                         f"{r['delta_ci_high']:+.2f}] | {r['p_value']:.3g} | {r['verdict']} | {r['tau2']:.3g} |")
    if lines[-1] == "":
        lines.pop()
    credited = [r for r in rows if r["n_decisions"]]
    if credited:
        lines += ["", "| arm | decisions | credit (points) | 95 % CI | helped | hurt | neutral | credit s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in credited:
            ci = "—" if r["credit_ci_low"] is None else f"[{r['credit_ci_low']:+.2f}, {r['credit_ci_high']:+.2f}]"
            lines.append(f"| {r['arm']} | {r['n_decisions']} | {r['credit_mean']:+.2f} | {ci} | {r['helped']} | "
                         f"{r['hurt']} | {r['neutral']} | {_f(r['credit_seconds'], '.1f')} |")
    notes = [f"Δ: mean over seeds of (arm − its baseline) in final test accuracy, paired by seed; CI: t "
             f"distribution, n−1 df; p: two-sided paired t-test; verdict: CI entirely above +{margin:g} / below "
             f"−{margin:g} points → better / worse, else inconclusive."]
    if any(r.get("llm_calls") for r in rows):
        notes.append("LLM cost $: mean per run, from each exchange's token counts and the prices in the models file "
                     "(--models); empty where the model has no price; ≥: some exchange said no token counts (no reply, "
                     "or still in flight when training ended) and is not in it. LLM s: seconds in requests, retry waits "
                     "apart; under advice async training does not wait for them.")
    if any(r.get("search_epochs") for r in rows):
        notes.append("Search epochs: the epochs a search's trials (or PBT members) trained to find the row's schedule, "
                     "selected on a validation split; the row's own runs, on the seeds the other rows use, are not in it.")
    if credited:
        notes.append(f"Credit: per decision that moved the LR, run − branch in accuracy (points) on the decision "
                     f"split, the branch trained from the same state and data order at the scheduler's LR; mean and "
                     f"95 % CI (t) over all decisions of the row's runs; helped / hurt: above +{credit_margin:g} / "
                     f"below −{credit_margin:g} points, else neutral.")
    if pooled:
        notes.append("Pooled: each data set's Δ weighed by 1/(SE² + τ²), τ² the variance between data sets "
                     "(DerSimonian–Laird); 95 % CI and p by Hartung–Knapp (t with k−1 df, k data sets): wide for few "
                     "data sets, by design; data sets whose Δ has no spread (under 2 pairs, or all pairs equal) cannot "
                     "be weighed and are left out.")
    if any(r["decisions_saw_test"] in ("1", "mixed") for r in rows):
        notes.append(f"{SAW_TEST.strip()} decisions read test-set numbers (per-class test accuracy in the prompt, "
                     "holdout 0): its test accuracy is not a held-out score.")
    unpaired = [f"{r['arm']}: {r['unpaired_seeds']}" for r in rows if r["unpaired_seeds"]]
    if unpaired:
        notes.append("Unpaired seeds (not in Δ): " + "; ".join(unpaired) + ".")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _filename(label):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")


def write_outputs(groups, rows, pairs, args):
    """Write every output into output_dir (after removing an earlier compare's) and return their paths."""
    os.makedirs(args.output_dir, exist_ok=True)
    for pattern in OURS:
        for old in glob.glob(os.path.join(args.output_dir, pattern)):
            os.remove(old)
    out = lambda name: os.path.join(args.output_dir, name)  # noqa: E731
    written = [out("results.md"), out("results.csv")]
    with open(written[0], "w") as f:
        f.write(markdown(rows, args.margin, args.credit_margin))
    with open(written[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    style = styles(list(groups), set(pairs.values()))  # one colour and dash per row in every figure
    for label in groups:
        base = pairs.get(label)
        if base and base != label:
            written.append(out(f"overlay_{_filename(label)}.png"))
            curves_figure(groups, [base, label], written[-1], f"{label} vs {base}", style)
    written.append(out("overview.png"))
    curves_figure(groups, list(groups), written[-1], "all arms", style)
    written.append(out("class_heatmap.png"))
    heatmap(groups, written[-1])
    if any(r["delta_vs_baseline"] is not None for r in rows):
        written.append(out("forest.png"))
        forest(rows, written[-1], args.margin)
    if any(r["delta_vs_baseline"] is not None and r["llm_calls"] for r in rows):
        written.append(out("pareto.png"))
        pareto(rows, written[-1])
    if any(r["n_decisions"] for r in rows):
        written.append(out("credit.png"))
        credit(groups, written[-1], style, args.credit_margin)
    return written


def main(args):
    for key in ("run_ids", "sweep_id", "experiment"):  # "none" (the parameters' default): not given
        if getattr(args, key) == "none":
            setattr(args, key, "")
    for key in ("margin", "credit_margin"):
        if not math.isfinite(getattr(args, key)) or getattr(args, key) < 0:
            raise UsageError(f"{key} must be a finite number >= 0 (points), got {getattr(args, key)}")
    runs = find_runs(args)
    what = (f"sweep {args.sweep_id}" if args.sweep_id else f"experiment {args.experiment}" if args.experiment
            else "the given runs")
    if not runs:
        print(f"lradvisor compare: no finished training runs in {what} on {mlflow.get_tracking_uri()}; nothing to compare",
              file=sys.stderr)
        return 1
    groups = group(runs)
    if args.baseline not in groups and args.baseline not in ARMS:  # a typo, not an arm that is merely absent
        raise UsageError(f"unknown baseline {args.baseline!r}: neither an arm nor a row of {what}; rows: "
                         + "; ".join(groups))
    notes = collect(groups)
    pairs, more = pick_baselines(groups, args.baseline)
    notes += more
    if not any(pairs.values()):
        notes.append(f"no finished {args.baseline!r} run in {what}: no Δ column and no overlays against it")
    epochs = {label: sorted({len(s["curves"]["test_acc"]) for s in g["seeds"]}) for label, g in groups.items()}
    if len({e for es in epochs.values() for e in es}) > 1:
        notes.append("the runs trained for different numbers of epochs ("
                     + ", ".join(f"{a}: {'/'.join(map(str, e))}" for a, e in epochs.items())
                     + "); final accuracies are not like for like")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    seen = {saw_test(g) for g in groups.values()}
    if "mixed" in seen or {"0", "1"} <= seen:
        print("warning: this comparison mixes runs whose decisions saw the test set (marked †, decisions_saw_test=1) "
              "with runs whose decisions did not; the first have no held-out score: rerun them with --holdout 0.1 "
              "for a like-for-like table", file=sys.stderr)

    rows = table(groups, pairs, args.margin, args.credit_margin)
    written = write_outputs(groups, rows, pairs, args)
    print(markdown(rows, args.margin, args.credit_margin))

    exp_id = runs[0].info.experiment_id
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_id=exp_id)
    name = f"compare-{args.sweep_id or args.experiment or 'runs'}"
    run = tracking.open_run(None, run_name=name)
    try:
        mlflow.set_tags({"role": "compare", "sweep_id": args.sweep_id, "compared_runs": len(runs),
                         "mlflow.runName": name})
        tracking.log_params_once({"baseline": args.baseline, "margin": args.margin, "credit_margin": args.credit_margin})
        for path in written:
            mlflow.log_artifact(path)
        mlflow.log_table({"row": [label for label, g in groups.items() for _ in g["seeds"]],
                          "arm": [g["arm"] for g in groups.values() for _ in g["seeds"]],
                          "seed": [s["seed"] for g in groups.values() for s in g["seeds"]],
                          "run_id": [s["run_id"] for g in groups.values() for s in g["seeds"]]},
                         artifact_file="compared_runs.json")
    except BaseException as e:
        tracking.end_failed("FAILED", f"{type(e).__name__}: {e}", e)
        raise
    tracking.end_finished()
    print(f"wrote {args.output_dir}/ and logged it to run {run.info.run_id}\n  view: {tracking.ui_link(exp_id)}")
    return 0
