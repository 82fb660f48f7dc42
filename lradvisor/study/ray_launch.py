"""The ray launcher (study/launch.py says what a launcher is): one Ray task per child, on the cluster at ray_address;
the task starts the child on its node, streams its console, and stops it with SIGTERM if the task is cancelled. Also
how lradvisor connects to Ray at all (ray_connect), for sweeps, builds and PBT searches."""

import dataclasses
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import tracking
from lradvisor.config import SweepConfig, to_flags
from lradvisor.data.files import QUIET_MD5
from lradvisor.errors import ServerLost, UsageError
from lradvisor.study import outage

# What a child on another node needs from this environment. Passed as the task's argument, so it is in no
# param, tag, or Ray job metadata (runtime_env) that Ray's dashboard shows.
FORWARD = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_GENAI_API_VERSION",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
)


def _term_with_parent():
    """For the child, run between fork and exec: SIGTERM when the Ray worker that started it dies (Linux's
    parent-death signal; the worker runs its task on its main thread, which lives as long as it does). A worker killed
    by a forced cancel, a driver that exits or a dying node would otherwise leave the child training, and later
    finishing, a run the sweep had already ended. Resolved before the fork (nothing to import or look up in the
    child of a threaded process), as Ray does for its own processes."""
    if sys.platform != "linux":
        return None
    import ctypes
    import signal

    prctl, term = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGTERM)
    return lambda: prctl(1, term)  # PR_SET_PDEATHSIG


def _ray_child(command, env, prefix, file):
    """Runs on a Ray worker: start the child, stream its console (Ray forwards it to the sweep's terminal), and
    stop it with SIGTERM if the task is cancelled, so that it ends its run KILLED. Returns (exit code, console)."""
    proc = subprocess.Popen(
        command,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_term_with_parent(),
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            print(f"[{prefix}] {line}", end="", flush=True)
        return proc.wait(), "".join(lines)
    except BaseException:  # ray.cancel raises KeyboardInterrupt here
        proc.terminate()
        lines += proc.stdout.readlines()
        proc.wait()
        try:  # the console goes with the run from here: the sweep gets no return value from a cancelled task
            MlflowClient(env["MLFLOW_TRACKING_URI"]).log_text(env["MLFLOW_RUN_ID"], "".join(lines), f"{file}.log")
        except Exception:
            pass
        raise


ELSE = "give --ray-address HOST:PORT, or use --ray-address local"
RAY_TIMEOUT = "LRADVISOR_RAY_TIMEOUT"  # seconds to wait for Ray to start or answer (default 30)
# Seconds an interrupted sweep gives its cancelled tasks, all together, to stop their children and return the
# consoles; a task still running then (a loaded node, a task Ray was handing to a worker as it was cancelled) is
# force-cancelled: its worker dies and its child gets SIGTERM from _term_with_parent.
CANCEL_GRACE = 30
# Set when a connect never answered: its thread is still inside Ray's C++ client, and the interpreter's normal exit
# could abort in it (SIGABRT after our one line, seen on a loaded machine); cli.console then leaves with os._exit.
HUNG = False


def refuse_where_nothing_listens(address, limit):
    """Refuse HOST:PORT where nothing answers a TCP connect (refused, timed out) in one line, before ray.init: that
    would go on retrying, in a thread nothing can stop, for as long as the process lives."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(limit, 5)).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise UsageError(f"no Ray cluster at {address!r} ({why}); start one (`ray start --head`), {ELSE}") from None


def ray_connect(address, cpus_per_run, gpus_per_run):
    """Connect to (or, for `local`, start) Ray within a bounded time, and check that some node can hold one run:
    before any run exists, in one line. Ray itself waits forever for a GCS that is not there, and binds a local
    instance to this machine's own address whatever it is asked (traffic stays on this machine). Sets
    Returns the GPUs per run (auto: 1 where the cluster has GPUs, else 0)."""
    limit = float(os.environ.get(RAY_TIMEOUT, 30))
    if (
        address not in ("auto", "local")
        and "RAY_AUTH_MODE" not in os.environ
        and (
            os.environ.get("RAY_AUTH_TOKEN")
            or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or os.path.isfile(os.path.expanduser("~/.ray/auth_token"))
        )
    ):
        # Ray sends the token only for clusters it finds itself ("auto"); `ray start --head` requires it once a
        # token exists on the machine, and a cluster without token auth accepts a client that sends one. Ray
        # reads this when it is imported, so before that.
        os.environ["RAY_AUTH_MODE"] = "token"
    if address not in ("auto", "local"):
        refuse_where_nothing_listens(address, limit)
    import ray

    kwargs = (
        {"address": "local", "include_dashboard": False}
        if address == "local"
        else {"address": None if address == "auto" and os.environ.get("RAY_ADDRESS") else address}
    )
    done, answered = {}, threading.Event()

    def connect():
        try:
            ray.init(log_to_driver=True, **kwargs)
            done["ok"] = True
        except BaseException as e:  # reported below, on the main thread
            done["error"] = e
        answered.set()
        if address == "local":
            # The local instance's processes die with the *thread* that started them (Linux's parent-death signal
            # follows the thread): this one stays, asleep, as long as the process does. Returning here killed the
            # GCS and, 60 s later, the whole sweep ("Failed to connect to GCS").
            threading.Event().wait()

    worker = threading.Thread(target=connect, daemon=True)  # a hung connect must not keep the process alive
    # Ray's C++ side logs a line every few seconds while it cannot reach the cluster: keep that (fd 2) aside
    # and quote its last line if connecting fails.
    saved = os.dup(2)
    log = tempfile.TemporaryFile(mode="w+")
    os.dup2(log.fileno(), 2)
    try:
        worker.start()
        answered.wait(limit)
    finally:
        if "ok" in done or "error" in done:
            os.dup2(saved, 2)
            os.close(saved)
        else:  # Ray goes on trying in the background until we exit: its lines stay aside, ours go out
            sys.stderr = os.fdopen(saved, "w", buffering=1)
            global HUNG
            HUNG = True
    with log:  # fd 2 keeps the file open where Ray goes on writing
        log.seek(0)
        said = [
            re.sub(r"^(\[[^\]]*\]|\d{4}-\d\d-\d\d [\d:,]+\s+\w+ \S+ --) ", "", line).strip()
            for line in log.read().splitlines()
            if line.strip()
        ]
    if "ok" not in done:
        why = (
            f"{type(done['error']).__name__}: {str(done['error']).splitlines()[0]}"
            if "error" in done
            else f"no answer within {limit:g} s ({RAY_TIMEOUT} sets the limit)"
        )
        why += f"; Ray said: {said[-1][:200]}" if said else ""
        what = "could not start a local Ray instance" if address == "local" else f"no Ray cluster at {address!r}"
        raise UsageError(f"{what} ({why}); start one (`ray start --head`), {ELSE}")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if gpus_per_run in ("", "auto"):  # one GPU per run where the cluster has GPUs
        gpus_per_run = 1.0 if any(n.get("GPU", 0) > 0 for n in nodes) else 0.0
    gpus = float(gpus_per_run)
    if gpus > 1 and gpus != int(gpus):
        raise UsageError(f"gpus_per_run above 1 must be a whole number (Ray's rule), got {gpus:g}")
    fits = [n for n in nodes if n.get("CPU", 0) >= cpus_per_run and n.get("GPU", 0) >= gpus]
    if not fits:
        have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no live node"
        raise UsageError(
            f"no node of the Ray cluster can hold a run of {cpus_per_run:g} CPUs and "
            f"{gpus:g} GPUs (nodes: {have}); lower --cpus-per-run / --gpus-per-run"
        )
    return gpus


def _await_ended(run_ids, client, limit=15):
    """Give the children of force-cancelled tasks (SIGTERMed as their workers died) a moment to end their runs KILLED
    themselves, so that none is still training when the sweep says it stopped everything."""
    t0 = time.monotonic()
    while run_ids and time.monotonic() - t0 < limit:
        run_ids = [r for r in run_ids if client.get_run(r).info.status == "RUNNING"]
        time.sleep(0.5 if run_ids else 0)


def ray(jobs, sw):
    import ray as ray_

    if not ray_.is_initialized():  # the sweep connected before making any run (ray_connect)
        ray_connect(sw.cfg.ray_address, sw.cfg.cpus_per_run, sw.cfg.gpus_per_run)
    try:
        task = ray_.remote(_ray_child).options(
            num_cpus=sw.cfg.cpus_per_run, num_gpus=float(sw.cfg.gpus_per_run), max_retries=0
        )
        # Other nodes do not share our working directory: the data folder goes as an absolute path.
        t = sw.cfg.train  # ... and the models file; with the variables its entries read their keys from
        flags = to_flags(
            dataclasses.replace(
                t,
                data_dir=os.path.abspath(t.data_dir),
                models=os.path.abspath(t.models) if t.models != "none" else "none",
            ),
            skip=SweepConfig.PER_CHILD,
        )
        from lradvisor.llm.zoo import read

        keys = [e["key_env"] for e in read(t.models).values() if e["key_env"]]
        forward = {k: os.environ[k] for k in (*FORWARD, *keys) if k in os.environ}
        forward["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()  # the resolved one, not only what the env said
        pending, results = {}, {}
        retried = []  # jobs trained again after their child lost the tracking server

        def submit(job):
            run_id = sw.create_child(job)
            env = {**forward, "MLFLOW_RUN_ID": run_id, "PYTHONUNBUFFERED": "1", QUIET_MD5: "1"}
            pending[task.remote(sw.command(job, flags), env, job.name, job.file)] = (job, run_id)

        for job in jobs:
            submit(job)
        try:
            while pending:
                (ref,), _ = ray_.wait(list(pending), num_returns=1)
                job, run_id = pending.pop(ref)
                try:
                    code, console = ray_.get(ref)
                    reason = None
                except ray_.exceptions.RayError as e:  # the worker or its node died: the child went with it
                    code, console, reason = -1, "", f"ray: {type(e).__name__}: {str(e).splitlines()[0]}"
                again = outage.train_again(job, code, retried)  # after waiting for the server, if it was lost
                sw.client.log_text(run_id, console, f"{job.file}.log")
                if again:
                    sw.settle(run_id, code, reason=outage.TRAINED_AGAIN)
                    submit(job)
                    continue
                results[job] = sw.settle(run_id, code, "FAILED", reason)
        except BaseException as e:
            server_lost = isinstance(e, ServerLost)  # nothing can be recorded: the next start of the sweep ends them
            sw.say_stopping(len(pending), e)
            with tracking.signals_held():
                for ref in pending:
                    ray_.cancel(ref)  # KeyboardInterrupt in the task, which SIGTERMs its child
                _, late = ray_.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE)
                for ref in late:
                    ray_.cancel(ref, force=True)
                if server_lost:
                    raise
                _await_ended([pending[ref][1] for ref in late], sw.client)
                for ref, (job, run_id) in pending.items():
                    try:
                        code, console = ray_.get(ref, timeout=10)
                    except Exception:  # cancelled (as it should be) or gone
                        code, console = -1, ""
                    if console:
                        sw.client.log_text(run_id, console, f"{job.file}.log")
                    sw.settle(run_id, code, "KILLED", "the sweep was interrupted")
            raise
        return results
    finally:
        ray_.shutdown()
