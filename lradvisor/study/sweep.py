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
from typing import NamedTuple

from lradvisor.arms import llm_tag, resolve
from lradvisor.config import SweepConfig, to_flags


def shared_flags(cfg):
    """The training flags every child gets: all its settings but those set per child."""
    return to_flags(cfg.train, skip=SweepConfig.PER_CHILD)


def sweep_key(arm, dataset, seed, flags):
    """Identity of a child within a sweep: same arm, data set, seed and training parameters -> same key. CIFAR-10's
    is the key from before data sets were a parameter, and width 64's the key from before width was one, so that a
    sweep started then resumes as before."""
    i = flags.index("--width") if "--width" in flags else None
    if i is not None and flags[i + 1] == "64":
        flags = flags[:i] + flags[i + 2 :]
    ident = [arm, seed, flags] if dataset == "cifar10" else [arm, dataset, seed, flags]
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]


def asks_llm(arm, cfg):
    t = cfg.train
    return resolve(arm, t.signals, t.every, t.advisor, t.schedule).asks_llm


def finished_keys(experiment_id, sweep_id):
    from mlflow.tracking import MlflowClient

    from lradvisor import tracking

    runs = MlflowClient().search_runs(
        [experiment_id],
        f"tags.sweep_id = {tracking.quote(sweep_id)} and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    return {r.data.tags.get("sweep_key") for r in runs}


def end_strays(client, experiment_id, sweep_id):
    """Runs of this sweep that an earlier start left RUNNING (it crashed, lost its tracking server, or was killed
    outright): ended KILLED, saying why, before this start trains what they did not finish. One sweep id at a time."""
    from lradvisor import tracking

    why = "its sweep stopped before ending it; the same sweep was started again"
    for r in client.search_runs(
        [experiment_id], f"tags.sweep_id = {tracking.quote(sweep_id)} and attributes.status = 'RUNNING'"
    ):
        if r.info.run_id != os.environ.get("MLFLOW_RUN_ID"):  # not the run `mlflow run` made for this start
            with tracking.writing():
                client.set_tag(r.info.run_id, "failure_reason", why)
                client.set_terminated(r.info.run_id, "KILLED")
            print(f"sweep {sweep_id}: ended {r.info.run_name} ({r.info.run_id}) KILLED: {why}")


class Row(NamedTuple):
    """What a sweep compares: an arm (an LLM arm once per model and temperature) on a data set, over seeds."""

    arm: str
    dataset: str
    llm_flags: tuple = ()  # an LLM arm's --llm-model and --temperature
    tag: str = ""  # ... as its run names show them

    @property
    def label(self):
        return self.arm + (f" [{self.tag}]" if self.tag else "")


def rows(cfg):
    out = []
    for arm in cfg.arm_list():
        # An LLM arm runs once per model and temperature; the others (baselines, controls) once.
        for llm_model, temperature in cfg.llm_axis() if asks_llm(arm, cfg) else [(None, None)]:
            extra = ("--llm-model", llm_model, "--temperature", repr(temperature)) if llm_model else ()
            tag = llm_tag(llm_model, temperature) if llm_model else ""
            out += [Row(arm, dataset, extra, tag) for dataset in cfg.dataset_list()]
    return out


def job(cfg, row, seed):
    from lradvisor.study import launch

    return launch.Job(
        row.arm,
        row.dataset,
        seed,
        sweep_key(row.arm, row.dataset, seed, shared_flags(cfg) + list(row.llm_flags)),
        row.llm_flags,
        row.tag,
    )


def jobs(cfg, sweep_id, exp_id, wanted):
    """(to run, already finished) children of (row, seed) pairs: a finished child has the same sweep_key."""
    done = finished_keys(exp_id, sweep_id) if exp_id else set()
    todo, skipped = [], []
    for row, seed in wanted:
        j = job(cfg, row, seed)
        (skipped if j.key in done else todo).append(j)
    return todo, skipped


def plan(cfg, arms, datasets, seeds):
    """The sweep's first line: what it will train."""
    seeds = (
        f"0.. until decided ({cfg.min_seeds} to {cfg.max_seeds})" if cfg.until_decided else ",".join(map(str, seeds))
    )
    models = f"; LLM arms x models {cfg.llm_models} x temperatures {cfg.temperatures}"
    return f"arms {','.join(arms)} x data sets {','.join(datasets)} x seeds {seeds}" + (
        models if any(asks_llm(a, cfg) for a in arms) else ""
    )


def check_advisors(cfg, asking, dataset):
    """Build each arm's advisor once before any run starts, so a missing key fails here, once."""
    from lradvisor.llm.advisor import Advisor

    for name, extra in dict.fromkeys(asking):
        child = cfg.child(name, dataset, 0, *((extra[1], float(extra[3])) if extra else ()))
        arm = resolve(name, child.signals, child.every, child.advisor, child.schedule)
        if arm.every:
            Advisor(child, arm)


def report(sweep_id, results, skipped, many_datasets):
    """Print one line per run; return the runs that failed."""
    failed = [k for k, v in results.items() if not v[0]]
    print(f"\nsweep {sweep_id}: {len(results) - len(failed)} finished, {len(failed)} failed, {len(skipped)} skipped")
    for child, (ok, run_id, acc, code) in results.items():
        state = f"test_acc {acc:.2f}%" if ok and acc is not None else f"FAILED (exit {code})"
        print(
            f"  {child.arm + (f' [{child.tag}]' if child.tag else ''):24s} "
            + (f"{child.dataset:9s}" if many_datasets else "")
            + f"seed {child.seed:<3d} {state:24s} run {run_id}"
        )
    return failed


def main(cfg):
    import mlflow
    from mlflow.tracking import MlflowClient

    from lradvisor import tracking
    from lradvisor.errors import ServerLost
    from lradvisor.study import launch, sequential

    arms, datasets, seeds = cfg.arm_list(), cfg.dataset_list(), cfg.seed_list()
    sweep_id = uuid.uuid4().hex[:8] if cfg.sweep_id in ("", "new") else cfg.sweep_id
    print(f"sweep {sweep_id}: {plan(cfg, arms, datasets, seeds)}")

    client = MlflowClient()
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`, whose run is our parent
        exp_id = client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    else:
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else None
    if exp_id:
        end_strays(client, exp_id, sweep_id)
    sweep_rows = rows(cfg)
    todo, skipped = (
        jobs(cfg, sweep_id, exp_id, [(r, seed) for r in sweep_rows for seed in seeds])
        if not cfg.until_decided
        else ([], [])
    )
    if skipped:
        print(
            f"sweep {sweep_id}: {len(skipped)} already finished with these parameters, not run again: "
            + ", ".join(j.name for j in skipped)
        )
    asking = [(r.arm, r.llm_flags) for r in sweep_rows] if cfg.until_decided else [(j.arm, j.llm_flags) for j in todo]
    check_advisors(cfg, asking, datasets[0])

    parallel, why = launch.parallel_auto(cfg.train.device) if cfg.parallel == "auto" else (int(cfg.parallel), "")
    print(
        f"sweep {sweep_id}: "
        + ("rounds of seeds until every arm is decided" if cfg.until_decided else f"{len(todo)} runs")
        + f" with the {cfg.launcher} launcher"
        + (f", {why} at a time" if cfg.launcher == "local" and why else "")
    )

    # Ctrl-C or SIGTERM: stop the children (they end KILLED), keep their logs, end the parent KILLED.
    with tracking.interrupts_end_runs():
        parent = tracking.open_run(cfg.experiment, run_name=f"sweep-{sweep_id}")
        try:  # whatever fails from here ends the parent, never leaves it RUNNING
            tracking.sqlite_for_many_writers()
            # mlflow.runName also under `mlflow run`, which names its run at random
            with tracking.writing():
                mlflow.set_tags({"sweep_id": sweep_id, "role": "sweep", "mlflow.runName": f"sweep-{sweep_id}"})
            tracking.log_params_once(
                {
                    "arms": ",".join(arms),
                    "datasets": ",".join(datasets),
                    "llm_models": cfg.llm_models,
                    "temperatures": cfg.temperatures,
                    "seeds": ",".join(map(str, seeds)),
                    "sweep_id": sweep_id,
                    "parallel": cfg.parallel,
                    "launcher": cfg.launcher,
                    **({k: getattr(cfg, k) for k in sequential.SETTINGS} if cfg.until_decided else {}),
                }
            )
            sw = launch.Sweep(cfg, sweep_id, parent.info.experiment_id, parent.info.run_id, shared_flags(cfg), parallel)
            if cfg.until_decided:
                results, skipped = sequential.rounds(
                    cfg, sw, sweep_rows, launch.launcher(cfg.launcher), lambda row, seed: job(cfg, row, seed)
                )
            else:
                results = launch.launcher(cfg.launcher)(todo, sw)
        except ServerLost:  # nothing can be recorded now; the same sweep started again ends what it left RUNNING
            raise
        except BaseException as e:  # SystemExit too: what a library's own SIGTERM handler raises
            killed = isinstance(e, (KeyboardInterrupt, SystemExit))
            tracking.end_failed("KILLED" if killed else "FAILED", str(e) if killed else f"{type(e).__name__}: {e}", e)
            raise

        failed = report(sweep_id, results, skipped, len(datasets) > 1)
        with tracking.writing():
            mlflow.set_tags({"finished": len(results) - len(failed), "failed": len(failed), "skipped": len(skipped)})
        if failed:
            tracking.end_failed("FAILED", "failed arms: " + ", ".join(j.name for j in failed))
            return 1
        tracking.end_finished()
        print(f"  view: {tracking.ui_link(parent.info.experiment_id)}")
        return 0
