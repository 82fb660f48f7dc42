"""The process that started a run, when it goes away. A job scheduler SIGTERMs `mlflow run` itself, which exits at once
and leaves its child training to FINISHED as an orphan; a sweep killed with SIGKILL leaves its children the same way.
The child watches its launcher and ends its run KILLED when it is gone; and after a Ctrl-C, a helper outlasts
`mlflow run` to put back the status it would overwrite."""

import os
import signal
import threading
import time

import mlflow
from mlflow.tracking import MlflowClient


SHELLS = ("bash", "sh", "dash", "zsh")  # `mlflow run` starts `bash -c COMMAND`; bash may or may not exec
LAUNCHER = {"pid": None, "gone": None}


def _stat(pid):
    """(state, parent pid, start time) of a process from /proc, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def watch_launcher(interval=1.0):
    """Watch the process that started us (through a shell in between); when it is gone, SIGTERM ourselves so
    that the run ends KILLED as on any SIGTERM, with the reason. Linux reads /proc; elsewhere a changed parent
    pid tells."""
    if LAUNCHER["pid"] is not None:  # watched already (a search trains its trials in one process)
        return
    pid = os.getppid()
    if _comm(pid) in SHELLS:
        pid = (_stat(pid) or (None, pid))[1]
    first = _stat(pid)
    LAUNCHER["pid"] = pid

    def alive():
        if first is None:  # no /proc
            return os.getppid() == LAUNCHER["pid"]
        now = _stat(pid)  # gone, a zombie nobody reaped yet, or its pid taken by another process
        return now is not None and now[0] not in "ZX" and now[2] == first[2]

    name = _comm(pid) or "launcher"

    def watch():
        while alive():
            time.sleep(interval)
        LAUNCHER["gone"] = f"{name}, pid {pid}"
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="lradvisor-watch-launcher").start()


# `mlflow run` made the run and set these before starting us (our sweep sets only MLFLOW_RUN_ID for its children).
UNDER_MLFLOW_RUN = bool(os.environ.get("MLFLOW_RUN_ID") and os.environ.get("MLFLOW_EXPERIMENT_ID"))


def outlast(status, run_id=None):
    """After a Ctrl-C, `mlflow run` (3.x) waits for us and then marks the run FAILED even when we ended it KILLED
    (its _maybe_set_run_terminated passes the status string to RunStatus.is_terminated, which expects an int).
    A detached helper waits for the launcher to exit and puts the status we recorded back."""
    import subprocess
    import sys

    run_id = run_id or mlflow.last_active_run().info.run_id
    code = (
        f"from lradvisor.launcher import restore_status; "
        f"restore_status({LAUNCHER['pid'] or os.getppid()}, {run_id!r}, {status!r})"
    )
    subprocess.Popen(
        [sys.executable, "-c", code],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def restore_status(launcher_pid, run_id, status, limit=120):
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            os.kill(launcher_pid, 0)
        except OSError:  # the launcher is gone: whatever it wrote is final, so correct it now
            break
        time.sleep(0.2)
    client = MlflowClient()
    if client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status)
