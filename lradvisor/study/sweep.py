"""Sweep: every arm x data set x seed as its own MLflow run, nested under one parent run, resumable.

Each child is a separate `python -m lradvisor train` process attached to a run made here (MLFLOW_RUN_ID),
so a crash or a kill in one arm cannot take the others down; launch.py starts them on this machine or on a
Ray cluster. A child already FINISHED in this sweep with the same parameters (same `sweep_key`) is not run
again.
"""

import hashlib
import json
import os
import uuid

from lradvisor.arms import llm_tag, resolve
from lradvisor.config import SweepConfig, to_flags


def shared_flags(cfg):
    """The training flags every child gets: all its settings but those set per child."""
    return to_flags(cfg.train, skip=SweepConfig.PER_CHILD)


def sweep_key(arm, dataset, seed, flags):
    """Identity of a child within a sweep: same arm, data set, seed and training parameters -> same key. CIFAR-10's
    is the key from before data sets were a parameter, so that a sweep started then resumes as before."""
    ident = [arm, seed, flags] if dataset == "cifar10" else [arm, dataset, seed, flags]
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]


def asks_llm(arm, cfg):
    t = cfg.train
    return resolve(arm, t.signals, t.every, t.advisor, t.schedule).asks_llm


def finished_keys(experiment_id, sweep_id):
    from mlflow.tracking import MlflowClient
    from lradvisor import tracking
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.sweep_id = {tracking.quote(sweep_id)} and attributes.status = 'FINISHED'", max_results=5000)
    return {r.data.tags.get("sweep_key") for r in runs}


def jobs(cfg, sweep_id, exp_id):
    """(to run, already finished) children: every arm (an LLM arm once per model and temperature) x data set x seed."""
    from lradvisor.study import launch
    flags = shared_flags(cfg)
    done = finished_keys(exp_id, sweep_id) if exp_id else set()
    todo, skipped = [], []
    for arm in cfg.arm_list():
        # An LLM arm runs once per model and temperature; the others (baselines, controls) once.
        for llm_model, temperature in cfg.llm_axis() if asks_llm(arm, cfg) else [(None, None)]:
            extra = ["--llm-model", llm_model, "--temperature", repr(temperature)] if llm_model else []
            tag = llm_tag(llm_model, temperature) if llm_model else ""
            for dataset in cfg.dataset_list():
                for seed in cfg.seed_list():
                    key = sweep_key(arm, dataset, seed, flags + extra)
                    (skipped if key in done else todo).append(launch.Job(arm, dataset, seed, key, tuple(extra), tag))
    return todo, skipped


def main(cfg):
    import mlflow
    from mlflow.tracking import MlflowClient
    from lradvisor import tracking
    from lradvisor.llm.advisor import Advisor
    from lradvisor.study import launch
    arms, datasets, seeds = cfg.arm_list(), cfg.dataset_list(), cfg.seed_list()
    sweep_id = uuid.uuid4().hex[:8] if cfg.sweep_id in ("", "new") else cfg.sweep_id
    print(f"sweep {sweep_id}: arms {','.join(arms)} x data sets {','.join(datasets)} x seeds {','.join(map(str, seeds))}"
          + (f"; LLM arms x models {cfg.llm_models} x temperatures {cfg.temperatures}"
             if any(asks_llm(a, cfg) for a in arms) else ""))

    client = MlflowClient()
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`, whose run is our parent
        exp_id = client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    else:
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else None
    todo, skipped = jobs(cfg, sweep_id, exp_id)
    if skipped:
        print(f"sweep {sweep_id}: {len(skipped)} already finished with these parameters, not run again: "
              + ", ".join(j.name for j in skipped))
    for name, extra in dict.fromkeys((j.arm, tuple(j.llm_flags)) for j in todo):  # a missing key fails here, once
        child = cfg.child(name, datasets[0], 0, *((extra[1], float(extra[3])) if extra else ()))
        arm = resolve(name, child.signals, child.every, child.advisor, child.schedule)
        if arm.every:
            Advisor(child, arm)

    parallel, why = launch.parallel_auto(cfg.train.device) if cfg.parallel == "auto" else (int(cfg.parallel), "")
    print(f"sweep {sweep_id}: {len(todo)} runs with the {cfg.launcher} launcher"
          + (f", {why} at a time" if cfg.launcher == "local" and why else ""))

    # Ctrl-C or SIGTERM: stop the children (they end KILLED), keep their logs, end the parent KILLED.
    with tracking.interrupts_end_runs():
        parent = tracking.open_run(cfg.experiment, run_name=f"sweep-{sweep_id}")
        tracking.sqlite_for_many_writers()
        # mlflow.runName also under `mlflow run`, which names its run at random
        with tracking.writing():
            mlflow.set_tags({"sweep_id": sweep_id, "role": "sweep", "mlflow.runName": f"sweep-{sweep_id}"})
        tracking.log_params_once({"arms": ",".join(arms), "datasets": ",".join(datasets), "llm_models": cfg.llm_models,
                                  "temperatures": cfg.temperatures,
                                  "seeds": ",".join(map(str, seeds)), "sweep_id": sweep_id,
                                  "parallel": cfg.parallel, "launcher": cfg.launcher})
        sw = launch.Sweep(cfg, sweep_id, parent.info.experiment_id, parent.info.run_id, shared_flags(cfg), parallel)
        try:
            results = getattr(launch, cfg.launcher)(todo, sw)
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
