"""Launchers: how a sweep runs its children. Each takes the jobs and a Sweep (what every child needs) and
returns {job: (ok, run_id, test_acc, exit code)}; on Ctrl-C or SIGTERM it stops its children (they
end their runs KILLED), keeps their consoles as artifacts, and re-raises KeyboardInterrupt.

Both run the same child, `python -m lradvisor train --arm A --dataset D --seed S <shared flags>`, attached through
MLFLOW_RUN_ID to a run created with the sweep's tags: nesting, resume and the summary do not depend on
where the child ran.

    local  N children at once as processes of this machine (one GPU each when there are several)
    ray    one Ray task per child, on the cluster at ray_address; the task starts the child on its node
           (ray_launch.py)
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from mlflow.tracking import MlflowClient

from lradvisor import tracking
from lradvisor.arms import run_name
from lradvisor.data.files import QUIET_MD5  # the sweep said it once; its children only record it
from lradvisor.study import outage


class Job(NamedTuple):
    """One child of a sweep."""

    arm: str
    dataset: str
    seed: int
    key: str  # sweep_key: the same arm, data set, seed and parameters as a finished child -> skipped
    llm_flags: tuple = ()  # an LLM arm's --llm-model and --temperature
    tag: str = ""  # ... as its run name shows them

    @property
    def name(self):  # the run's name and its console prefix
        return run_name(self.arm, self.dataset, self.seed, self.tag)

    @property
    def file(self):  # its log file's name: a model may be named `openai:Qwen/Qwen2.5-7B-Instruct`
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.name).strip("_")


@dataclass
class Sweep:
    cfg: object  # the sweep's SweepConfig
    sweep_id: str
    experiment_id: str
    parent_id: str
    flags: list  # the shared training flags of every child
    parallel: int = 1  # children at once (local launcher)
    client: MlflowClient = field(default_factory=MlflowClient)

    def create_child(self, job):
        with tracking.writing():
            return self.client.create_run(
                self.experiment_id,
                run_name=job.name,
                tags={
                    "mlflow.parentRunId": self.parent_id,
                    "sweep_id": self.sweep_id,
                    "sweep_key": job.key,
                    "arm": job.arm,
                    "seed": str(job.seed),
                    "role": "arm",
                },
            ).info.run_id

    def command(self, job, flags=None):
        return [
            sys.executable,
            "-m",
            "lradvisor",
            "train",
            "--arm",
            job.arm,
            "--dataset",
            job.dataset,
            "--seed",
            str(job.seed),
            *(flags or self.flags),
            *job.llm_flags,
        ]

    def settle(self, run_id, code, status_if_running="FAILED", reason=None):
        """The child's result as the tracking server has it; a run its child could not end is ended here."""
        with tracking.writing():
            run = self.client.get_run(run_id)
            if run.info.status == "RUNNING":
                if reason:
                    self.client.set_tag(run_id, "failure_reason", reason)
                self.client.set_terminated(run_id, status_if_running)
                run = self.client.get_run(run_id)
        ok = code == 0 and run.info.status == "FINISHED"
        return ok, run_id, run.data.metrics.get("test_acc"), code

    def say_stopping(self, n, e):
        """Said at once when a sweep stops with runs in training. The children's own "interrupted; the run was
        ended KILLED" lines follow, and were taken for the sweep's while its run stayed RUNNING until its last line
        (over a minute at load ~20: consoles to log, runs to settle)."""
        from lradvisor.errors import ServerLost

        if n and not isinstance(e, ServerLost):
            if isinstance(e, KeyboardInterrupt):
                why = str(e) or "interrupted"  # a signal says which; a bare one was re-raised by Ray's wait
            else:
                why = "interrupted" if isinstance(e, SystemExit) else type(e).__name__
            print(
                f"sweep {self.sweep_id}: stopping ({why}): {n} run(s) in training end KILLED, then this sweep's run; "
                "its last line says when that is done",
                flush=True,
            )


# ----------------------------------------------------------------------------------------------------------
# local: processes on this machine


def _pump(proc, prefix, log):
    """Copy a child's console to ours, each line prefixed with its arm and seed, and to its log file."""
    for line in proc.stdout:
        log.write(line)
        sys.stdout.write(f"[{prefix}] {line}")
        sys.stdout.flush()


def _keep_logs(client, logs, logdir, server_lost=False):
    """Each child's console as an artifact of its run, however the sweep ends; then the temp folder goes, unless a
    console could not be logged (it stays, and the line says where)."""
    kept = False
    for run_id, log in logs:
        log.close()
        if server_lost:
            kept = True
            continue
        try:
            with tracking.writing():
                client.log_artifact(run_id, log.name)
        except Exception as e:
            kept = True
            print(f"sweep: could not log {log.name} to run {run_id}: {e}")
    if kept:
        print(f"sweep: the children's consoles that are not in MLflow are kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)


def parallel_auto(device):
    """How many runs at once on this machine. CPU: 1 (two at once were slower than one on 2 cores). CUDA: as
    many per GPU as fit in RUN_GIB each, capped at MAX_PER_GPU; RUN_GIB leaves room over the 2.2 GiB a
    run peaked at on an H200 (2026-11-26, nvidia-smi, CUDA context included: ResNet-18, batch 128, bf16, CIFAR-10
    resident). There 4 runs at once already trained as many images a second as 8; more still overlap LLM waits."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return 1, "1 (CPU)"
    n = torch.cuda.device_count()
    free = min(torch.cuda.mem_get_info(i)[0] for i in range(n)) / 2**30
    per_gpu = max(1, min(MAX_PER_GPU, int(free // RUN_GIB)))
    return n * per_gpu, (
        f"{n * per_gpu} ({per_gpu} per GPU x {n}: {free:.0f} GiB free / {RUN_GIB} GiB per run, capped at {MAX_PER_GPU})"
    )


RUN_GIB, MAX_PER_GPU = 3.0, 8


def local(jobs, sw):
    import torch

    from lradvisor.errors import ServerLost

    n = torch.cuda.device_count()
    # GPU slots: with several GPUs each child gets one of its own, `parallel / n` children per GPU.
    gpus = [g for g in range(n) for _ in range(max(1, -(-sw.parallel // n)))] if n > 1 else []
    todo, results, running, logs = list(jobs), {}, [], []  # running: (proc, run_id, job, gpu, pump)
    retried = []  # jobs trained again after their child lost the tracking server
    logdir = tempfile.mkdtemp(prefix=f"lradvisor-sweep-{sw.sweep_id}-")
    try:
        while todo or running:
            while todo and len(running) < sw.parallel:
                job = todo.pop(0)
                run_id = sw.create_child(job)
                gpu = gpus.pop(0) if gpus else None
                env = {**os.environ, "MLFLOW_RUN_ID": run_id, "PYTHONUNBUFFERED": "1", QUIET_MD5: "1"}
                env.pop("MLFLOW_EXPERIMENT_ID", None)
                if gpu is not None:
                    env["CUDA_VISIBLE_DEVICES"] = str(gpu)
                log = open(os.path.join(logdir, f"{job.file}.log"), "w")
                logs.append((run_id, log))
                proc = subprocess.Popen(
                    sw.command(job), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                pump = threading.Thread(target=_pump, args=(proc, job.name, log), daemon=True)
                pump.start()
                running.append((proc, run_id, job, gpu, pump))
            time.sleep(0.2)
            for item in [r for r in running if r[0].poll() is not None]:
                proc, run_id, job, gpu, pump = item
                running.remove(item)
                pump.join()
                if gpu is not None:
                    gpus.append(gpu)
                if outage.train_again(job, proc.returncode, retried):
                    sw.settle(run_id, proc.returncode, reason=outage.TRAINED_AGAIN)
                    todo.insert(0, job)
                    continue
                results[job] = sw.settle(run_id, proc.returncode)  # killed too hard to end its run: FAILED
    except BaseException as e:
        lost = isinstance(e, ServerLost)  # nothing can be recorded: the next start of the sweep ends them
        sw.say_stopping(len(running), e)
        with tracking.signals_held():  # a second Ctrl-C must not leave children or runs behind
            for proc, *_ in running:  # children end their own runs KILLED on SIGTERM
                proc.terminate()
            for proc, run_id, job, gpu, pump in running:
                proc.wait()
                pump.join(timeout=10)
                if not lost:
                    sw.settle(run_id, proc.returncode, "KILLED")
            _keep_logs(sw.client, logs, logdir, lost)
        raise
    _keep_logs(sw.client, logs, logdir)
    return results


def launcher(name):
    """The launcher a sweep's or a build's `launcher` setting names: local (here) or ray (ray_launch.py)."""
    if name == "ray":
        from lradvisor.study.ray_launch import ray

        return ray
    return local
