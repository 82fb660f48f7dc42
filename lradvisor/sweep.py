"""Sweep: every arm x seed as its own MLflow run, nested under one parent run, resumable, N at a time.

Each child is a separate `python -m lradvisor train` process attached to a run made here (MLFLOW_RUN_ID),
so a crash or a kill in one arm cannot take the others down, and each process can own a GPU. A child
already FINISHED in this sweep with the same parameters (same `sweep_key`) is not run again.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import advisor, tracking
from lradvisor.arms import ARMS, GROUPS, UsageError, resolve

SWEEP_ONLY = ("command", "arms", "seeds", "sweep_id", "parallel", "experiment")


def parse_list(text, name, convert=str, valid=None):
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        items = [convert(s) for s in items]
    except ValueError:
        raise UsageError(f"invalid {name} {text!r}; give a comma-separated list of integers") from None
    bad = [s for s in items if valid is not None and s not in valid]
    if bad:
        raise UsageError(f"invalid {name}: {', '.join(map(str, bad))}; valid: {', '.join(valid)}")
    if not items:
        raise UsageError(f"invalid {name} {text!r}; give a comma-separated list")
    return list(dict.fromkeys(items))  # drop repeats, keep order


def parse_arms(text):
    """Arm names, with groups (published, ladder, controls) expanded in place."""
    expanded = ",".join(",".join(GROUPS.get(a.strip(), [a.strip()])) for a in str(text).split(","))
    return parse_list(expanded, "arms", valid=list(ARMS))


def shared_flags(args):
    """The training flags every child gets: everything but the sweep's own options."""
    flags = []
    for key, value in vars(args).items():
        if key not in SWEEP_ONLY:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def sweep_key(arm, seed, flags):
    """Identity of a child within a sweep: same arm, seed and training parameters -> same key."""
    return hashlib.sha1(json.dumps([arm, seed, flags]).encode()).hexdigest()[:16]


def finished_keys(experiment_id, sweep_id):
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.sweep_id = {tracking.quote(sweep_id)} and attributes.status = 'FINISHED'", max_results=5000)
    return {r.data.tags.get("sweep_key") for r in runs}


def _pump(proc, prefix, log):
    """Copy a child's console to ours, each line prefixed with its arm and seed, and to its log file."""
    for line in proc.stdout:
        log.write(line)
        sys.stdout.write(f"[{prefix}] {line}")
        sys.stdout.flush()


def check_args(args):
    """Everything a child would refuse, checked once here, before the parent or any child run exists."""
    parse_arms(args.arms)
    parse_list(args.seeds, "seeds", int)
    if args.parallel < 1:
        raise UsageError(f"parallel must be >= 1, got {args.parallel}")
    if args.sweep_id != "new":
        tracking.check_id(args.sweep_id, "sweep_id")
    from lradvisor.data import load_cifar10
    from lradvisor.device import pick_device
    pick_device(args.device)
    load_cifar10(args.data_dir)  # downloads once here, not in N children at once; and validates the files


def _keep_logs(client, logs, logdir):
    """Each child's console as an artifact of its run, however the sweep ends; then the temp folder goes."""
    for run_id, log in logs:
        log.close()
        try:
            client.log_artifact(run_id, log.name)
        except Exception as e:
            print(f"sweep: could not log {log.name} to run {run_id}: {e}")
    shutil.rmtree(logdir, ignore_errors=True)


def main(args):
    arms = parse_arms(args.arms)
    seeds = parse_list(args.seeds, "seeds", int)
    sweep_id = uuid.uuid4().hex[:8] if args.sweep_id in ("", "new") else args.sweep_id
    flags = shared_flags(args)
    print(f"sweep {sweep_id}: arms {','.join(arms)} x seeds {','.join(map(str, seeds))}, {args.parallel} at a time")

    client = MlflowClient()
    if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`, whose run is our parent
        exp_id = client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    else:
        exp = client.get_experiment_by_name(args.experiment)
        exp_id = exp.experiment_id if exp else None
    done = finished_keys(exp_id, sweep_id) if exp_id else set()
    todo, skipped = [], []
    for arm in arms:
        for seed in seeds:
            key = sweep_key(arm, seed, flags)
            (skipped if key in done else todo).append((arm, seed, key))
    if skipped:
        print(f"sweep {sweep_id}: {len(skipped)} already finished with these parameters, not run again: "
              + ", ".join(f"{a}/s{s}" for a, s, _ in skipped))
    for arm in dict.fromkeys(a for a, _, _ in todo):  # missing credentials fail here, not in every child
        advisor.make_asker(argparse.Namespace(**vars(args), arm=arm, seed=0), resolve(arm, args.signals, args.every, args.advisor, args.schedule))

    import torch  # only to count GPUs: each parallel child gets its own when there are several
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.device_count() > 1 else []

    # Ctrl-C or SIGTERM: stop the children (they end KILLED), keep their logs, end the parent KILLED.
    with tracking.interrupts_end_runs():
        parent = tracking.open_run(args.experiment, run_name=f"sweep-{sweep_id}")
        exp_id = parent.info.experiment_id
        # mlflow.runName also under `mlflow run`, which names its run at random
        mlflow.set_tags({"sweep_id": sweep_id, "role": "sweep", "mlflow.runName": f"sweep-{sweep_id}"})
        tracking.log_params_once({"arms": ",".join(arms), "seeds": ",".join(map(str, seeds)), "sweep_id": sweep_id,
                                  "parallel": args.parallel})

        results, running, logs = {}, [], []  # running: (proc, run_id, arm, seed, gpu, log, thread)
        logdir = tempfile.mkdtemp(prefix=f"lradvisor-sweep-{sweep_id}-")
        try:
            while todo or running:
                while todo and len(running) < args.parallel:
                    arm, seed, key = todo.pop(0)
                    child = client.create_run(exp_id, run_name=f"{arm}-s{seed}", tags={
                        "mlflow.parentRunId": parent.info.run_id, "sweep_id": sweep_id, "sweep_key": key,
                        "arm": arm, "seed": str(seed), "role": "arm"})
                    gpu = gpus.pop(0) if gpus else None
                    env = {**os.environ, "MLFLOW_RUN_ID": child.info.run_id, "PYTHONUNBUFFERED": "1"}
                    env.pop("MLFLOW_EXPERIMENT_ID", None)
                    if gpu is not None:
                        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
                    log = open(os.path.join(logdir, f"{arm}-s{seed}.log"), "w")
                    logs.append((child.info.run_id, log))
                    proc = subprocess.Popen([sys.executable, "-m", "lradvisor", "train", "--arm", arm, "--seed", str(seed),
                                             *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    pump = threading.Thread(target=_pump, args=(proc, f"{arm} s{seed}", log), daemon=True)
                    pump.start()
                    running.append((proc, child.info.run_id, arm, seed, gpu, log, pump))
                time.sleep(0.2)
                for item in [r for r in running if r[0].poll() is not None]:
                    proc, run_id, arm, seed, gpu, log, pump = item
                    running.remove(item)
                    pump.join()
                    if gpu is not None:
                        gpus.append(gpu)
                    run = client.get_run(run_id)
                    if run.info.status == "RUNNING":  # killed too hard to end its own run
                        client.set_terminated(run_id, "FAILED")
                    ok = proc.returncode == 0 and run.info.status == "FINISHED"
                    results[(arm, seed)] = (ok, run_id, run.data.metrics.get("test_acc"), proc.returncode)
        except BaseException as e:
            with tracking.signals_held():  # a second Ctrl-C must not leave children or runs behind
                for proc, *_ in running:  # children end their own runs KILLED on SIGTERM
                    proc.terminate()
                for proc, run_id, arm, seed, gpu, log, pump in running:
                    proc.wait()
                    pump.join(timeout=10)
                    if client.get_run(run_id).info.status == "RUNNING":
                        client.set_terminated(run_id, "KILLED")
                _keep_logs(client, logs, logdir)
            tracking.end_failed("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", f"{type(e).__name__}: {e}", e)
            raise
        _keep_logs(client, logs, logdir)

        failed = [k for k, v in results.items() if not v[0]]
        print(f"\nsweep {sweep_id}: {len(results) - len(failed)} finished, {len(failed)} failed, {len(skipped)} skipped")
        for (arm, seed), (ok, run_id, acc, code) in results.items():
            state = f"test_acc {acc:.2f}%" if ok and acc is not None else f"FAILED (exit {code})"
            print(f"  {arm:12s} seed {seed:<3d} {state:24s} run {run_id}")
        mlflow.set_tags({"finished": len(results) - len(failed), "failed": len(failed), "skipped": len(skipped)})
        if failed:
            tracking.end_failed("FAILED", "failed arms: " + ", ".join(f"{a}/s{s}" for a, s in failed))
            return 1
        tracking.end_finished()
        print(f"  view: {tracking.ui_link(exp_id)}")
        return 0
