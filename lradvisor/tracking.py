"""MLflow plumbing: attach to the run `mlflow run` made (or make one), log params once, end runs honestly."""

import contextlib
import json
import os
import re
import signal
import threading
import time
import traceback

import mlflow
from mlflow.tracking import MlflowClient


def open_run(experiment, run_name=None):
    """Inside `mlflow run` (MLFLOW_RUN_ID is set) attach to its run; otherwise start one in `experiment`."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.start_run()  # set_experiment() here would raise: the run already has one
    if experiment:
        mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name)


def log_params_once(params):
    """Log params that the run does not have yet: `mlflow run` already logged its entry point's
    parameters as the strings it was given, and re-logging one with another spelling ("3" vs "3.0")
    raises."""
    run = mlflow.active_run()
    have = MlflowClient().get_run(run.info.run_id).data.params
    new = {k: str(v) for k, v in params.items() if k not in have}
    if new:
        mlflow.log_params(new)


def _interrupt(signum, frame):
    # The first Ctrl-C or SIGTERM ends the run KILLED; the ones after it (`mlflow run` SIGTERMs its child right
    # after a Ctrl-C reached both) must not cut that short, or the run is left RUNNING and then marked FAILED.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)")


@contextlib.contextmanager
def interrupts_end_runs():
    """Within: Ctrl-C and SIGTERM raise KeyboardInterrupt once, then are ignored. Handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_held():
    """Once a run starts ending, a second Ctrl-C or the SIGTERM `mlflow run` sends after the first must not
    interrupt end_run halfway (the launcher would then mark the run FAILED instead of KILLED)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def end_finished():
    with signals_held():
        mlflow.end_run("FINISHED")


def end_failed(status, reason, exc=None):
    """End the active run as FAILED or KILLED, with the reason as a tag and the traceback as an artifact.
    Logging problems here must not hide the original error, so they are only printed."""
    with signals_held():
        try:
            mlflow.set_tag("failure_reason", reason[:5000])
            if exc is not None:
                mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt")
        except Exception as e:  # the tracking server may be the thing that failed
            print(f"lradvisor: could not record the failure in MLflow: {e}")
        finally:
            mlflow.end_run(status)
            if status == "KILLED" and UNDER_MLFLOW_RUN:
                _outlast_launcher(status)


# `mlflow run` made the run and set these before starting us (our sweep sets only MLFLOW_RUN_ID for its children).
UNDER_MLFLOW_RUN = bool(os.environ.get("MLFLOW_RUN_ID") and os.environ.get("MLFLOW_EXPERIMENT_ID"))


def _outlast_launcher(status):
    """After a Ctrl-C, `mlflow run` (3.x) waits for us and then marks the run FAILED even when we ended it KILLED
    (its _maybe_set_run_terminated passes the status string to RunStatus.is_terminated, which expects an int).
    A detached helper waits for the launcher to exit and puts the status we recorded back."""
    import subprocess
    import sys
    run_id = mlflow.last_active_run().info.run_id
    code = (f"from lradvisor.tracking import restore_status; "
            f"restore_status({os.getppid()}, {run_id!r}, {status!r})")
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


def log_series(key, values, first_step):
    """Many values of one metric (e.g. the LR of every batch) in as few requests as MLflow allows."""
    from mlflow.entities import Metric
    run_id, now = mlflow.active_run().info.run_id, int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)]
    for i in range(0, len(metrics), 1000):  # the REST API takes at most 1000 metrics per batch
        MlflowClient().log_batch(run_id, metrics=metrics[i:i + 1000])


# ----------------------------------------------------------------------------------------------------------
# A tracking server that is not there, or goes away

class ServerLost(Exception):
    """The tracking server stopped answering mid-run; the message says where the unsent records are."""


def _server_url():
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def server_down(timeout=5.0):
    """None when the tracking store answers (or is local), else why it does not."""
    import urllib.request
    url = _server_url()
    if url is None:
        return None
    try:
        urllib.request.urlopen(url + "/health", timeout=timeout).read()
    except Exception as e:  # refused, timed out, DNS, HTTP error: all mean "not usable now"
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    return None


def check_server():
    why = server_down()
    if why:
        from lradvisor.arms import UsageError
        raise UsageError(f"cannot reach the tracking server {_server_url()} ({why}); start it, or point "
                         "MLFLOW_TRACKING_URI at a running one (unset it for the local ./mlflow.db)")


def save_unsent(run_id, records):
    """Keep what could not be sent in a local file, and forget the run locally: ending it would mean two more
    minutes of retries against a server that is gone. Returns the file's path."""
    path = os.path.abspath(f"lradvisor-unsent-{run_id}.json")
    with open(path, "w") as f:
        json.dump({"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri(), "records": records}, f, indent=1, default=str)
    from mlflow.tracking import fluent
    fluent._active_run_stack.get().clear()  # private, but the only way to drop a run without a server call
    os.environ.pop("MLFLOW_RUN_ID", None)
    return path


def mark_refused(run_id, message, arm=None):
    """`mlflow run` made this run before our code saw its parameters: record why it is refused, end it FAILED."""
    try:
        client = MlflowClient()
        client.set_tag(run_id, "failure_reason", message[:5000])
        if arm:
            client.set_tag(run_id, "arm", arm)
        client.set_terminated(run_id, "FAILED")
    except Exception as e:
        print(f"lradvisor: could not record the refusal in MLflow: {e}")


def ui_link(experiment_id):
    """The runs table of an experiment: MLflow 3's UI opens experiments on a GenAI overview unless told so."""
    base = _server_url() or "http://127.0.0.1:5000"
    where = "" if _server_url() else " (after `mlflow ui`)"
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning{where}"


# ----------------------------------------------------------------------------------------------------------
# Search filters

ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_id(value, name):
    """Ids go into search filters and artifact names: letters, digits, `_ . -` only."""
    if not ID.match(value):
        from lradvisor.arms import UsageError
        raise UsageError(f"invalid {name} {value!r}; use letters, digits, '_', '.' and '-' only")
    return value


def quote(value):
    """A value for an MLflow search filter, as a quoted string literal."""
    value = str(value)
    if "'" in value:
        return '"' + value.replace('"', '\\"') + '"'
    return f"'{value}'"
