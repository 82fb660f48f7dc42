"""Sweeps on a Ray cluster: a real local Ray head (`ray start --head`, 2 CPUs, no dashboard) in its own process
group, a sweep through `--launcher ray`, its resume, and Ctrl-C ending everything KILLED."""

import os
import signal
import socket
import subprocess
import sys
import time

import mlflow
import pytest

from conftest import free_port, runs_of

ray = pytest.importorskip("ray")  # the optional extra; the README's test command installs it


def sweep(address, experiment, data, *flags, env_extra=None, **kw):
    cmd = [
        sys.executable,
        "-m",
        "lradvisor",
        "sweep",
        "--launcher",
        "ray",
        "--ray-address",
        address,
        "--data-dir",
        data,
        "--batch-size",
        "20",
        "--subset-ratio",
        "0.25",
        "--experiment",
        experiment,
        *map(str, flags),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", **(env_extra or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, **{"stderr": subprocess.STDOUT, **kw}, text=True)


def test_sweep_on_ray_nests_and_resumes(ray_head, cifar_dir, experiment):
    args = ("--arms", "baseline,random_control", "--seeds", "0", "--sweep-id", "onray", "--epochs", 2)
    out = sweep(ray_head, experiment, cifar_dir, *args).communicate(timeout=300)[0]
    assert "sweep onray: 2 finished, 0 failed, 0 skipped" in out, out[-3000:]
    runs = runs_of(experiment)
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "arm"]
    assert parent.info.status == "FINISHED" and parent.data.params["launcher"] == "ray"
    assert sorted(r.data.tags["arm"] for r in children) == ["baseline", "random_control"]
    assert all(
        r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children
    )
    for r in children:  # the console came back from the worker, as with the local launcher
        assert f"{r.data.tags['arm']}-s0.log" in [a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id)]
    out = sweep(ray_head, experiment, cifar_dir, *args).communicate(timeout=300)[0]
    assert "2 already finished" in out and "0 finished, 0 failed, 2 skipped" in out, out[-3000:]


def test_sigterm_cancels_the_ray_tasks_and_ends_everything_killed(ray_head, cifar_dir, experiment):
    """What a job scheduler sends. Ray's driver installs its own SIGTERM handler (sys.exit(15), which left the
    parent FAILED); the sweep connects first, so its own handler is the one in force while runs exist."""
    proc = sweep(
        ray_head,
        experiment,
        cifar_dir,
        "--arms",
        "baseline,cosine",
        "--seeds",
        "0",
        "--epochs",
        200,
        "--sweep-id",
        "cancel",
    )
    try:
        t0 = time.monotonic()
        for line in proc.stdout:
            if "epoch   1/200" in line or time.monotonic() - t0 > 120:
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=180)[0]
        assert proc.returncode == 130, rest
    finally:
        proc.kill()
    status = sorted((r.data.tags.get("role"), r.info.status) for r in runs_of(experiment))
    assert status == [("arm", "KILLED"), ("arm", "KILLED"), ("sweep", "KILLED")]
    # Ray's wait re-raises the sweep's KeyboardInterrupt without its words: "interrupted", not "terminated (SIGTERM)"
    stopping = rest.index("sweep cancel: stopping (interrupted): 2 run(s) in training end KILLED")
    assert stopping < rest.index("lradvisor sweep: interrupted; the run was ended KILLED"), rest
    left = subprocess.run(["pgrep", "-f", f"lradvisor train .*--data-dir {cifar_dir}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a child outlived the cancelled sweep"


PARENT = """
import subprocess, sys
from lradvisor.study.ray_launch import _term_with_parent
subprocess.Popen(sys.argv[1:], preexec_fn=_term_with_parent()).wait()
"""


@pytest.mark.slow
def test_a_child_whose_ray_worker_dies_ends_its_run_killed(tiny_cifar, experiment):
    """A task force-cancelled after the grace (or a worker that dies with its node) leaves no child training on: the
    child, started as _ray_child starts it, gets SIGTERM when its parent is SIGKILLed, and ends its run KILLED."""
    cmd = ["lradvisor", "train", "--data-dir", tiny_cifar, "--epochs", 100000, "--batch-size", 20]
    cmd += ["--experiment", experiment]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, sys.executable, "-m", *map(str, cmd)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in parent.stdout:
            if line.startswith("epoch"):
                break
        (run,) = runs_of(experiment)
        assert run.info.status == "RUNNING"
        parent.kill()
        for _ in range(120):
            if mlflow.get_run(run.info.run_id).info.status != "RUNNING":
                break
            time.sleep(0.5)
    finally:
        parent.kill()
        subprocess.run(["pkill", "-f", "--", f"--data-dir {tiny_cifar} --epochs 100000"])  # only if the test failed
    assert mlflow.get_run(run.info.run_id).info.status == "KILLED"


@pytest.mark.parametrize(
    "where, flags, says",
    [
        ("nothing", [], "no Ray cluster at '127.0.0.1:"),  # refused at once, before Ray is asked
        ("silent", [], "no answer within 5 s"),  # it listens, says nothing: Ray is asked, and never answers
        (
            "head",
            ["--cpus-per-run", 64],
            "no node of the Ray cluster can hold a run of 64 CPUs and 0 GPUs (nodes: 2 CPUs",
        ),
    ],
)
def test_ray_refusals_come_before_any_run(where, flags, says, request, cifar_dir, experiment):
    """Nothing at the address, something there that never answers (Ray itself would wait forever), or no node that
    can ever hold a run (a task would queue forever): one line, exit 2, within seconds, and no run. The silent one
    leaves Ray's connect hanging in a thread; the process must still exit 2 (it once aborted after its line, -6)."""
    silent = socket.create_server(("127.0.0.1", 0)) if where == "silent" else None  # accepts, never speaks
    if where == "head":
        address = request.getfixturevalue("ray_head")
    else:
        address = f"127.0.0.1:{silent.getsockname()[1] if silent else free_port()}"
    t0 = time.monotonic()
    proc = sweep(
        address,
        experiment,
        cifar_dir,
        "--arms",
        "baseline",
        "--epochs",
        1,
        *flags,
        env_extra={"LRADVISOR_RAY_TIMEOUT": "5"},
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if silent:
            silent.close()
    assert proc.returncode == 2, out + err
    assert time.monotonic() - t0 < 60
    last = err.strip().splitlines()[-1]
    assert last.startswith("lradvisor sweep: error: ") and says in last, err
    assert runs_of(experiment) == []
