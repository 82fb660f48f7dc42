"""Sweep: every arm x data set x seed as its own MLflow run, nested under one parent run, resumable.

Each child is a separate `python -m lradvisor train` process attached to a run made here (MLFLOW_RUN_ID),
so a crash or a kill in one arm cannot take the others down; launch.py starts them on this machine or on a
Ray cluster. A child already FINISHED in this sweep with the same parameters (same `sweep_key`) is not run
again.
"""

import argparse
import hashlib
import json
import os
import uuid

from lradvisor.arms import ARMS, GROUPS, UsageError, check_id, llm_tag, resolve

LAUNCHERS = ("local", "ray")  # the functions of launch.py by these names
SWEEP_ONLY = ("command", "arms", "dataset", "seeds", "sweep_id", "parallel", "experiment", "launcher", "ray_address",
              "gpus_per_run", "cpus_per_run", "llm_models", "temperatures")


def parse_list(text, name, convert=str, valid=None):
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        items = [convert(s) for s in items]
    except ValueError:
        kind = "numbers" if convert is float else "integers"
        raise UsageError(f"invalid {name} {text!r}; give a comma-separated list of {kind}") from None
    bad = [s for s in items if valid is not None and s not in valid]
    if bad:
        raise UsageError(f"invalid {name}: {', '.join(map(str, bad))}; valid: {', '.join(valid)}")
    if not items:
        raise UsageError(f"invalid {name} {text!r}; give a comma-separated list")
    return list(dict.fromkeys(items))  # drop repeats, keep order


def parse_arms(text):
    """Arm names, with groups (published, ladder, controls) expanded in place."""
    expanded = ",".join(",".join(GROUPS.get(a.strip(), [a.strip()])) for a in str(text).split(","))
    try:
        return parse_list(expanded, "arms", valid=list(ARMS))
    except UsageError as e:
        raise UsageError(f"{e}; groups: {', '.join(GROUPS)}") from None


def shared_flags(args):
    """The training flags every child gets: everything but the sweep's own options."""
    flags = []
    for key, value in vars(args).items():
        if key not in SWEEP_ONLY:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def sweep_key(arm, dataset, seed, flags):
    """Identity of a child within a sweep: same arm, data set, seed and training parameters -> same key. CIFAR-10's
    is the key from before data sets were a parameter, so that a sweep started then resumes as before."""
    ident = [arm, seed, flags] if dataset == "cifar10" else [arm, dataset, seed, flags]
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]


def llm_axis(args):
    """(llm_model, temperature) pairs every LLM arm is crossed with."""
    return [(m, t) for m in parse_list(args.llm_models, "llm_models")
            for t in parse_list(args.temperatures, "temperatures", float)]


def asks_llm(arm, args):
    spec = resolve(arm, args.signals, args.every, args.advisor, args.schedule)
    return bool(spec["every"]) and spec["advisor"] in ("gemini", "openai")


def parse_datasets(text):
    from lradvisor.datasets import DATASETS
    return parse_list(text, "dataset", valid=list(DATASETS))


def finished_keys(experiment_id, sweep_id):
    from mlflow.tracking import MlflowClient
    from lradvisor import tracking
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.sweep_id = {tracking.quote(sweep_id)} and attributes.status = 'FINISHED'", max_results=5000)
    return {r.data.tags.get("sweep_key") for r in runs}


def check_args(args):
    """Everything a child would refuse that costs nothing to check: before the data, the device or Ray."""
    parse_arms(args.arms)
    parse_datasets(args.dataset)
    parse_list(args.seeds, "seeds", int)
    llm_axis(args)
    if args.parallel != "auto" and not (args.parallel.isdigit() and int(args.parallel) >= 1):
        raise UsageError(f"parallel must be auto or an integer >= 1, got {args.parallel!r}")
    if args.launcher not in LAUNCHERS:
        raise UsageError(f"unknown launcher {args.launcher!r}; valid: {', '.join(LAUNCHERS)}")
    if args.cpus_per_run <= 0:
        raise UsageError(f"cpus_per_run must be > 0, got {args.cpus_per_run}")
    try:
        if args.gpus_per_run != "auto" and float(args.gpus_per_run) < 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"gpus_per_run must be auto or a number >= 0, got {args.gpus_per_run!r}") from None
    if args.sweep_id != "new":
        check_id(args.sweep_id, "sweep_id")


def check_resources(args):
    """What the sweep needs to exist, before the parent or any child run does: the device, the data (downloaded
    once here, not in N children at once; its md5 said once), and the Ray cluster with a node that fits a run."""
    from lradvisor import launch
    from lradvisor.data import DATASETS, holdout_split, load, stratified_subset
    from lradvisor.device import pick_device
    pick_device(args.device)
    for name in parse_datasets(args.dataset):
        labels = load(args.data_dir, name)[1]
        for seed in parse_list(args.seeds, "seeds", int):  # a holdout too big for the data: said once, not per run
            holdout_split(labels, stratified_subset(labels, args.subset_ratio, seed), args.holdout, seed,
                          DATASETS[name]["classes"])
    if getattr(args, "launcher", None) == "ray" or getattr(args, "method", None) == "pbt":  # a sweep's or a search's
        import importlib.util
        what = "PBT needs Ray Tune" if getattr(args, "method", None) == "pbt" else "the ray launcher needs Ray"
        if importlib.util.find_spec("ray") is None:
            raise UsageError(f'{what}: pip install "lradvisor[ray]"')
        launch.ray_connect(args)


def main(args):
    import mlflow
    from mlflow.tracking import MlflowClient
    from lradvisor import advisor, launch, tracking
    arms = parse_arms(args.arms)
    datasets = parse_datasets(args.dataset)
    seeds = parse_list(args.seeds, "seeds", int)
    sweep_id = uuid.uuid4().hex[:8] if args.sweep_id in ("", "new") else args.sweep_id
    flags = shared_flags(args)
    print(f"sweep {sweep_id}: arms {','.join(arms)} x data sets {','.join(datasets)} x seeds {','.join(map(str, seeds))}"
          + (f"; LLM arms x models {args.llm_models} x temperatures {args.temperatures}"
             if any(asks_llm(a, args) for a in arms) else ""))

    client = MlflowClient()
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`, whose run is our parent
        exp_id = client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    else:
        exp = client.get_experiment_by_name(args.experiment)
        exp_id = exp.experiment_id if exp else None
    done = finished_keys(exp_id, sweep_id) if exp_id else set()
    todo, skipped = [], []
    axis = llm_axis(args)
    for arm in arms:
        # An LLM arm runs once per model and temperature; the others (baselines, controls) once.
        for llm_model, temperature in axis if asks_llm(arm, args) else [(None, None)]:
            extra = ["--llm-model", llm_model, "--temperature", repr(temperature)] if llm_model else []
            tag = llm_tag(llm_model, temperature) if llm_model else ""
            for dataset in datasets:
                for seed in seeds:
                    key = sweep_key(arm, dataset, seed, flags + extra)
                    (skipped if key in done else todo).append(launch.Job(arm, dataset, seed, key, tuple(extra), tag))
    if skipped:
        print(f"sweep {sweep_id}: {len(skipped)} already finished with these parameters, not run again: "
              + ", ".join(j.name for j in skipped))
    for arm, extra in dict.fromkeys((j.arm, tuple(j.llm_flags)) for j in todo):  # missing keys fail here, not in every child
        llm = dict(zip(("llm_model", "temperature"), (extra[1], float(extra[3])))) if extra else \
            {"llm_model": "auto", "temperature": 1.0}
        advisor.make_asker(argparse.Namespace(**vars(args), arm=arm, seed=0, **llm),
                           resolve(arm, args.signals, args.every, args.advisor, args.schedule))

    parallel, why = launch.parallel_auto(args.device) if args.parallel == "auto" else (int(args.parallel), "")
    print(f"sweep {sweep_id}: {len(todo)} runs with the {args.launcher} launcher"
          + (f", {why} at a time" if args.launcher == "local" and why else ""))

    # Ctrl-C or SIGTERM: stop the children (they end KILLED), keep their logs, end the parent KILLED.
    with tracking.interrupts_end_runs():
        parent = tracking.open_run(args.experiment, run_name=f"sweep-{sweep_id}")
        tracking.sqlite_for_many_writers()
        # mlflow.runName also under `mlflow run`, which names its run at random
        with tracking.writing():
            mlflow.set_tags({"sweep_id": sweep_id, "role": "sweep", "mlflow.runName": f"sweep-{sweep_id}"})
        tracking.log_params_once({"arms": ",".join(arms), "datasets": ",".join(datasets), "llm_models": args.llm_models,
                                  "temperatures": args.temperatures,
                                  "seeds": ",".join(map(str, seeds)), "sweep_id": sweep_id,
                                  "parallel": args.parallel, "launcher": args.launcher})
        sw = launch.Sweep(args, sweep_id, parent.info.experiment_id, parent.info.run_id, flags, parallel)
        try:
            results = getattr(launch, args.launcher)(todo, sw)
        except BaseException as e:  # SystemExit too: what a library's own SIGTERM handler raises
            killed = isinstance(e, (KeyboardInterrupt, SystemExit))
            tracking.end_failed("KILLED" if killed else "FAILED", str(e) if killed else f"{type(e).__name__}: {e}", e)
            raise

        failed = [k for k, v in results.items() if not v[0]]
        print(f"\nsweep {sweep_id}: {len(results) - len(failed)} finished, {len(failed)} failed, {len(skipped)} skipped")
        for job, (ok, run_id, acc, code) in results.items():
            state = f"test_acc {acc:.2f}%" if ok and acc is not None else f"FAILED (exit {code})"
            print(f"  {job.arm + (f' [{job.tag}]' if job.tag else ''):24s} " + (f"{job.dataset:9s}" if len(datasets) > 1 else "")
                  + f"seed {job.seed:<3d} {state:24s} run {run_id}")
        with tracking.writing():
            mlflow.set_tags({"finished": len(results) - len(failed), "failed": len(failed), "skipped": len(skipped)})
        if failed:
            tracking.end_failed("FAILED", "failed arms: " + ", ".join(j.name for j in failed))
            return 1
        tracking.end_finished()
        print(f"  view: {tracking.ui_link(parent.info.experiment_id)}")
        return 0
