"""MLflow plumbing: attach to the run `mlflow run` made (or make one), log params once, end runs honestly."""

import contextlib
import json
import os
import signal
import threading
import time
import traceback

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import launcher

TABLE = "advisor/calls.json"  # an advisor run's exchanges, one row each (llm/records.py writes it, replay reads it)
# Per-class accuracy of a data set with more than CLASS_METRICS classes: one row per epoch and class, instead
# of a metric per class (100 metrics would bury the run page's charts).
CLASS_TABLE, CLASS_METRICS = "class_acc.json", 20


def open_run(experiment, run_name=None, run_id=None, unique=False):
    """Inside `mlflow run` or a sweep (MLFLOW_RUN_ID is set) attach to its run, or to `run_id` (a search's trial,
    made by the search); otherwise start one in `experiment`. The run is named `run_name` either way (`mlflow
    run` names its runs at random)."""
    if run_id:
        return mlflow.start_run(run_id=run_id)
    if os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run()  # set_experiment() here would raise: the run already has one
    else:
        if experiment:
            mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=run_name)
    if run_name:
        name = unique_name(run, run_name) if unique else run_name
        if name != run.info.run_name:
            with writing():
                mlflow.set_tag("mlflow.runName", name)
    return run


def unique_name(run, name):
    """`name`, or `name (2)`, `(3)`... when another run of the experiment has it (a try-out's `baseline-digits-s0`
    and a sweep's seed-0 baseline would read alike in the UI's list). The attempts of one sweep job (a resume
    trains a killed one again: same sweep id and key) share their name: they are the same job."""
    job = {k: run.data.tags.get(k) for k in ("sweep_id", "sweep_key")}
    same_job = all(job.values())
    others = MlflowClient().search_runs(
        [run.info.experiment_id], f"attributes.run_name LIKE {quote(name + '%')}", max_results=5000
    )
    taken = {
        r.info.run_name
        for r in others
        if r.info.run_id != run.info.run_id and not (same_job and all(r.data.tags.get(k) == v for k, v in job.items()))
    }
    n, candidate = 1, name
    while candidate in taken:
        n += 1
        candidate = f"{name} ({n})"
    return candidate


def set_experiment_tag_once(experiment_id, key, value):
    """Runs starting at once in one experiment (a sweep's children) would each insert the tag, and a server's
    sqlite store refuses the second insert: set it only when missing, and accept that another run won."""
    client = MlflowClient()
    if client.get_experiment(experiment_id).tags.get(key) == value:
        return
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except mlflow.exceptions.MlflowException:
        if client.get_experiment(experiment_id).tags.get(key) != value:
            raise


def ready_store():
    """MLflow creates (or migrates) a local sqlite store the first time a process touches it, and two processes that
    touch a fresh one at once race in that migration: one dies in a 60-line traceback from alembic ("expected to
    match one row"). The first makes it under a lock; the others wait, then find it made.

    The lock is on the store's folder, never on the database file: SQLite keeps POSIX locks on that file, and closing
    any descriptor of it in a process drops all of them (fcntl's rule), so a command run in a process whose MLflow
    already had the store open broke its locking ("disk I/O error" in the next sweep of the same process)."""
    import fcntl

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    folder = os.path.dirname(os.path.abspath(uri.removeprefix("sqlite:///").split("?")[0]))
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        MlflowClient().search_experiments(max_results=1)
    finally:
        os.close(fd)  # releases the flock


def sqlite_for_many_writers():
    """A sweep's runs write to MLflow's local sqlite store at once. In SQLite's default journal a reader's lock
    blocks a writer's commit, and MLflow's writers wait up to 20 s a turn: a 2-run sweep stopped with SIGTERM
    took 75 s to end instead of 11. WAL lets readers and a writer go on together; it is a setting of the
    database file (MLflow reads and writes it as before)."""
    import sqlite3

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///").split("?")[0], timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL").fetchall()


def log_params_once(params):
    """Log params that the run does not have yet: `mlflow run` already logged its entry point's
    parameters as the strings it was given, and re-logging one with another spelling ("3" vs "3.0")
    raises."""
    run = mlflow.active_run()
    with writing():
        have = MlflowClient().get_run(run.info.run_id).data.params
        new = {k: str(v) for k, v in params.items() if k not in have}
        if new:
            mlflow.log_params(new)


def _ignore(signum, frame):
    """Ignores a signal, as SIG_IGN would, but in Python: a signal that arrived together with the first (a terminal's
    Ctrl-C and the launcher's SIGTERM) is already pending when the first one's handler runs, and CPython raises
    "OSError: Signal 15 ignored due to race condition" for a pending signal whose handler became SIG_IGN."""


def _interrupt(signum, frame):
    if WRITING["depth"]:  # inside an MLflow write: raise when it is done (see writing())
        WRITING["pending"] = signum
        return
    # The first Ctrl-C or SIGTERM ends the run KILLED; the ones after it (`mlflow run` SIGTERMs its child right
    # after a Ctrl-C reached both) must not cut that short, or the run is left RUNNING and then marked FAILED.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)
    if launcher.LAUNCHER["gone"]:
        raise KeyboardInterrupt(f"the process that started this run ({launcher.LAUNCHER['gone']}) is gone")
    raise KeyboardInterrupt("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)")


WRITING = {"depth": 0, "pending": None}


@contextlib.contextmanager
def writing():
    """Around MLflow writes during a run: a Ctrl-C or SIGTERM that lands inside one is raised when it is done.
    Raised inside a sqlite transaction, it left that transaction open, and the run's own end_run then waited on
    it for MLflow's 20 s and failed ("database is locked"), leaving the run RUNNING with a traceback."""
    WRITING["depth"] += 1
    try:
        yield
    finally:
        WRITING["depth"] -= 1
        if not WRITING["depth"] and WRITING["pending"] is not None:
            signum, WRITING["pending"] = WRITING["pending"], None
            _interrupt(signum, None)


@contextlib.contextmanager
def interrupts_end_runs():
    """Within: Ctrl-C and SIGTERM raise KeyboardInterrupt once, then are ignored, and a run that someone else
    started (MLFLOW_RUN_ID: `mlflow run`, a sweep) ends the same way when that someone goes away. Handlers are
    restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    if os.environ.get("MLFLOW_RUN_ID"):
        launcher.watch_launcher()
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
    old = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
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
    Logging problems here must not hide the original error, so they are only printed, saying exactly what was
    recorded and what was not (a full disk fails the artifact and leaves the tag and the status in the database)."""
    with signals_held():
        steps = [("the tag failure_reason", lambda: mlflow.set_tag("failure_reason", reason[:5000]))]
        if exc is not None:
            steps.append(
                (
                    "the traceback (error.txt)",
                    lambda: mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt"),
                )
            )
        recorded, missed = [], []
        for what, step in steps:
            try:
                step()
                recorded.append(what)
            except Exception as e:  # the tracking server, or the disk, may be the thing that failed
                missed.append(f"{what}: {type(e).__name__}: {e}")
        try:
            mlflow.end_run(status)
            recorded.insert(0, f"the status {status}")
        except Exception as e:
            missed.insert(0, f"the status {status} (the run stays RUNNING there): {type(e).__name__}: {e}")
        if missed:
            print(
                "lradvisor: recorded in MLflow: "
                + (", ".join(recorded) or "nothing")
                + "; not recorded: "
                + "; ".join(missed)
            )
        if status == "KILLED" and launcher.UNDER_MLFLOW_RUN and not launcher.LAUNCHER["gone"]:
            launcher.outlast(status)


def log_series(key, values, first_step):
    """Many values of one metric (e.g. the LR of every batch) in as few requests as MLflow allows."""
    from mlflow.entities import Metric

    run_id, now = mlflow.active_run().info.run_id, int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)]
    for i in range(0, len(metrics), 1000):  # the REST API takes at most 1000 metrics per batch
        with writing():
            MlflowClient().log_batch(run_id, metrics=metrics[i : i + 1000])


def declare_tables(paths):
    """Mark artifacts that write_table rewrites as tables: the tag log_table would set, by which the UI shows them
    "as table" and load_table finds them (log_table itself would append to the file instead)."""
    if paths:
        mlflow.set_tag("mlflow.loggedArtifacts", json.dumps([{"path": p, "type": "table"} for p in paths]))


def write_table(rows, artifact_file):
    """rows (dicts) as a table artifact in log_table's format, replacing the file: log_table would append."""
    import tempfile

    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(artifact_file))
        pd.DataFrame(rows).to_json(path, orient="split", index=False, date_format="iso")
        mlflow.log_artifact(path, os.path.dirname(artifact_file) or None)


# ----------------------------------------------------------------------------------------------------------
# A tracking server that is not there, or goes away


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
        from lradvisor.errors import UsageError

        raise UsageError(
            f"cannot reach the tracking server {_server_url()} ({why}); start it, or point "
            "MLFLOW_TRACKING_URI at a running one (unset it for the local ./mlflow.db)"
        )


def save_unsent(run_id, records):
    """Keep what could not be sent in a local file, and forget the run locally: ending it would mean two more
    minutes of retries against a server that is gone. Returns the file's path."""
    path = os.path.abspath(f"lradvisor-unsent-{run_id}.json")
    with open(path, "w") as f:
        json.dump(
            {"run_id": run_id, "tracking_uri": mlflow.get_tracking_uri(), "records": records}, f, indent=1, default=str
        )
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


def ui_link(experiment_id, run_id=None):
    """The runs table of an experiment, or a run's page: MLflow 3.17's UI opens both in its GenAI views (an
    overview; "Evaluations" for a run) unless told otherwise; this suffix opens the model-training views."""
    base = _server_url() or "http://127.0.0.1:5000"
    where = "" if _server_url() else " (after `mlflow ui`)"
    run = f"/runs/{run_id}" if run_id else ""
    return f"{base}/#/experiments/{experiment_id}{run}?workflowType=machine_learning{where}"


# ----------------------------------------------------------------------------------------------------------
# Search filters


def quote(value):
    """A value for an MLflow search filter, as a quoted string literal."""
    value = str(value)
    if "'" in value:
        return '"' + value.replace('"', '\\"') + '"'
    return f"'{value}'"
