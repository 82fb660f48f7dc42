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
import sys

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import tracking
from lradvisor.arms import ARMS, LLMS, check_id, llm_tag
from lradvisor.data.registry import DATASETS
from lradvisor.errors import UsageError
from lradvisor.study.figures import CURVES, credit, curves_figure, forest, heatmap, pareto, styles
from lradvisor.study.table import BUDGET, markdown, saw_test, table
from lradvisor.tracking import CLASS_TABLE, TABLE

# Params that say where or how a run was recorded, not what it trained: runs differing only in these are
# seeds of one configuration. (A replay's source run differs per seed by construction; the models file is where an
# entry was read, and the entry's model is in llm_model_used.)
NOT_CONFIG = {"seed", "device_name", "torch_version", "replay_run_id", "models"}
# What follows from llm_model (which provider serves it, the name sent on the wire): not repeated in row labels.
FROM_LLM_MODEL = {"arm.advisor", "llm_model_used"}
# The files a compare writes; an earlier compare's are removed from output_dir first, nothing else is touched.
OURS = (
    "results.md",
    "results.csv",
    "overview.png",
    "class_heatmap.png",
    "forest.png",
    "credit.png",
    "pareto.png",
    "overlay_*.png",
)


def find_runs(run_ids="", sweep_id="", experiment=""):
    # ids are checked before the store is touched: a refusal is one line, with no store created or migrated first
    ids = [check_id(r.strip(), "run id") for r in run_ids.split(",") if r.strip()] if run_ids else []
    if sweep_id and not run_ids:
        check_id(sweep_id, "sweep_id")
    client = MlflowClient()
    finished = "attributes.status = 'FINISHED'"
    if run_ids:
        runs = []
        for run_id in ids:
            try:
                runs.append(client.get_run(run_id))
            except mlflow.exceptions.MlflowException:
                raise UsageError(f"no run {run_id!r} on {mlflow.get_tracking_uri()}") from None
        runs = [r for r in runs if r.info.status == "FINISHED"]
    elif sweep_id:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(
            exp_ids, f"tags.sweep_id = {tracking.quote(sweep_id)} and {finished}", max_results=5000
        )
    elif experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise UsageError(f"no experiment named {experiment!r} on {mlflow.get_tracking_uri()}")
        runs = client.search_runs([exp.experiment_id], finished, max_results=5000)
    else:
        raise UsageError("say what to compare: --sweep-id ID, --experiment NAME or --run-ids ID,ID,...")
    # Training runs only: not sweep, search or compare runs, nor a decision benchmark's trajectories (they train the
    # baseline's schedule of another benchmark's settings), nor a search's trials and PBT members (they select the
    # winner on a validation split; the winner's own runs, role arm, are the row).
    return [
        r for r in runs if "arm" in r.data.tags and r.data.tags.get("role") not in ("trial", "member", "trajectory")
    ]


def config_of(run):
    config = {k: v for k, v in run.data.params.items() if k not in NOT_CONFIG}
    config.setdefault("dataset", "cifar10")  # runs from before data sets were a parameter trained on CIFAR-10
    config.setdefault("advice", "sync")  # ... and before advice was one, waited for every reply
    config.setdefault("width", "64")  # ... and before width was one, were ResNet-18 as published
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
        varying = sorted(
            {k for c in configs for k, v in c if k not in tied and any(dict(o).get(k) != v for o in configs)}
        )
        for config, members in sorted(configs.items()):
            d = dict(config)
            # An LLM arm's row is named as its runs are (`losses [flash, T=0.2]`, arms.llm_tag): the model when one
            # is named, the temperature when not 1; then whatever else differs.
            asked = d.get("arm.advisor") in LLMS
            named = llm_tag(d.get("llm_model", "auto"), float(d.get("temperature", 1))) if asked else ""
            rest = [k for k in varying if not (asked and k in FROM_LLM_MODEL | {"llm_model", "temperature"})]
            shown = ([named] if named else []) + [f"{k}={d.get(k, '')}" for k in rest]
            label = arm + (" [" + ", ".join(shown) + "]" if shown else "")
            groups[label] = {
                "arm": arm,
                "dataset": d["dataset"],
                "config": d,
                "runs": members,
                # what the pooled row matches across data sets: all but the data set's own settings
                "pool_key": (arm, tuple((k, v) for k, v in config if k not in tied | {"dataset"})),
            }
    order = list(DATASETS)  # rows of one data set together, in the registry's order
    return dict(
        sorted(
            groups.items(),
            key=lambda kv: (
                order.index(kv[1]["dataset"]) if kv[1]["dataset"] in order else len(order),
                kv[1]["dataset"],
            ),
        )
    )


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
            g["seeds"].append(
                {
                    "seed": seed,
                    "run_id": r.info.run_id,
                    "curves": curves,
                    "class_acc": class_acc_of(r, g["dataset"]),
                    "budget": {k: r.data.metrics.get(k) for k in BUDGET},
                    "cost_partial": "llm_cost_unknown" in r.data.tags,
                    "saw_test": r.data.tags.get("decisions_saw_test", "?"),  # "?": recorded before the tag existed
                    "credits": credits_of(r),
                }
            )
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
    return [
        {k: r[k] for k in ("epoch", "credit_acc", "credit_loss")}
        for r in rows
        if r.get("credit_acc") is not None and math.isfinite(r["credit_acc"])
    ]


def pick_baselines(groups, baseline):
    """label -> label of the baseline group it is measured against (None if there is none). `baseline` names an
    arm or a row label; with several baseline configurations each row gets the one differing from it least."""
    if baseline in groups:  # one row: the baseline of its own data set's rows
        return {
            label: baseline if g["dataset"] == groups[baseline]["dataset"] else None for label, g in groups.items()
        }, []
    pairs, notes = {}, []
    for label, g in groups.items():
        candidates = [b for b, h in groups.items() if h["arm"] == baseline and h["dataset"] == g["dataset"]]

        def distance(b):
            base = groups[b]["config"]
            return sum(1 for k in base if k in g["config"] and g["config"][k] != base[k])

        ranked = sorted(candidates, key=distance)
        if len(ranked) > 1 and distance(ranked[0]) == distance(ranked[1]) and label not in candidates:
            notes.append(
                f"{label}: several {baseline!r} configurations fit equally; give --baseline one of: "
                + "; ".join(candidates)
            )
            pairs[label] = None
        else:
            pairs[label] = ranked[0] if ranked else None
    return pairs, notes


def _filename(label):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")


def write_outputs(groups, rows, pairs, cfg):
    """Write every output into output_dir (after removing an earlier compare's) and return their paths."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    for pattern in OURS:
        for old in glob.glob(os.path.join(cfg.output_dir, pattern)):
            os.remove(old)
    out = lambda name: os.path.join(cfg.output_dir, name)  # noqa: E731
    written = [out("results.md"), out("results.csv")]
    with open(written[0], "w") as f:
        f.write(markdown(rows, cfg.margin, cfg.credit_margin, cfg.alpha))
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
        forest(rows, written[-1], cfg.margin)
    if any(r["delta_vs_baseline"] is not None and r["llm_calls"] for r in rows):
        written.append(out("pareto.png"))
        pareto(rows, written[-1])
    if any(r["n_decisions"] for r in rows):
        written.append(out("credit.png"))
        credit(groups, written[-1], style, cfg.credit_margin)
    return written


def main(cfg):
    run_ids, sweep_id, experiment = (cfg.given(k) for k in ("run_ids", "sweep_id", "experiment"))
    for key in ("margin", "credit_margin"):
        if not math.isfinite(getattr(cfg, key)) or getattr(cfg, key) < 0:
            raise UsageError(f"{key} must be a finite number >= 0 (points), got {getattr(cfg, key)}")
    runs = find_runs(run_ids, sweep_id, experiment)
    what = f"sweep {sweep_id}" if sweep_id else f"experiment {experiment}" if experiment else "the given runs"
    if not runs:
        print(
            f"lradvisor compare: no finished training runs in {what} on {mlflow.get_tracking_uri()}; "
            "nothing to compare",
            file=sys.stderr,
        )
        return 1
    groups = group(runs)
    if cfg.baseline not in groups and cfg.baseline not in ARMS:  # a typo, not an arm that is merely absent
        raise UsageError(
            f"unknown baseline {cfg.baseline!r}: neither an arm nor a row of {what}; rows: " + "; ".join(groups)
        )
    notes = collect(groups)
    pairs, more = pick_baselines(groups, cfg.baseline)
    notes += more
    if not any(pairs.values()):
        notes.append(f"no finished {cfg.baseline!r} run in {what}: no Δ column and no overlays against it")
    epochs = {label: sorted({len(s["curves"]["test_acc"]) for s in g["seeds"]}) for label, g in groups.items()}
    if len({e for es in epochs.values() for e in es}) > 1:
        notes.append(
            "the runs trained for different numbers of epochs ("
            + ", ".join(f"{a}: {'/'.join(map(str, e))}" for a, e in epochs.items())
            + "); final accuracies are not like for like"
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    seen = {saw_test(g) for g in groups.values()}
    if "mixed" in seen or {"0", "1"} <= seen:
        print(
            "warning: this comparison mixes runs whose decisions saw the test set (marked †, decisions_saw_test=1) "
            "with runs whose decisions did not; the first have no held-out score: rerun them with --holdout 0.1 "
            "for a like-for-like table",
            file=sys.stderr,
        )

    rows = table(groups, pairs, cfg.margin, cfg.credit_margin, cfg.alpha)
    written = write_outputs(groups, rows, pairs, cfg)
    print(markdown(rows, cfg.margin, cfg.credit_margin, cfg.alpha))

    exp_id = runs[0].info.experiment_id
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_id=exp_id)
    name = f"compare-{sweep_id or experiment or 'runs'}"
    run = tracking.open_run(None, run_name=name)
    try:
        mlflow.set_tags({"role": "compare", "sweep_id": sweep_id, "compared_runs": len(runs), "mlflow.runName": name})
        tracking.log_params_once(
            {"baseline": cfg.baseline, "margin": cfg.margin, "credit_margin": cfg.credit_margin, "alpha": cfg.alpha}
        )
        for path in written:
            mlflow.log_artifact(path)
        mlflow.log_table(
            {
                "row": [label for label, g in groups.items() for _ in g["seeds"]],
                "arm": [g["arm"] for g in groups.values() for _ in g["seeds"]],
                "seed": [s["seed"] for g in groups.values() for s in g["seeds"]],
                "run_id": [s["run_id"] for g in groups.values() for s in g["seeds"]],
            },
            artifact_file="compared_runs.json",
        )
    except BaseException as e:
        tracking.end_failed("FAILED", f"{type(e).__name__}: {e}", e)
        raise
    tracking.end_finished()
    print(f"wrote {cfg.output_dir}/ and logged it to run {run.info.run_id}\n  view: {tracking.ui_link(exp_id)}")
    return 0
