"""Shared fixtures: a tiny synthetic CIFAR-10 in the real format, and a private MLflow tracking store.

Everything goes through the real entry points: `python scripts/make_fake_cifar.py`, the CLI
(`lradvisor.cli.main`, in-process for speed) and `mlflow run` (as a subprocess).
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fast tier (`python -m pytest -m "not slow"`) is the pure core. A test that trains, records in MLflow, or starts a
# server needs one of these fixtures and is slow; one that starts a process says so itself (@pytest.mark.slow).
SLOW_FIXTURES = {"cifar_dir", "tiny_cifar", "tracking_uri", "experiment", "server", "remote", "ray_head", "bench"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar")
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "make_fake_cifar.py"),
            "--out",
            str(out),
            "--train-per-class",
            "8",
            "--test-per-class",
            "4",
        ],
        check=True,
        capture_output=True,
    )
    return str(out)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """20 training and 10 test images: for tests of schedules and records, which run many epochs and where what
    is learned does not matter (evaluation is most of a tiny epoch's cost)."""
    out = tmp_path_factory.mktemp("tiny_cifar")
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "make_fake_cifar.py"),
            "--out",
            str(out),
            "--train-per-class",
            "2",
            "--test-per-class",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    return str(out)


@pytest.fixture(scope="session", autouse=True)
def outside_the_checkout(tmp_path_factory):
    """Run every test from a temp folder: MLflow's defaults (./mlruns, ./mlflow.db) and our own files
    (lradvisor-unsent-*.json) land there, never in the checkout; fail if anything lands there anyway."""
    before = set(os.listdir(ROOT))
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(cwd)
    new = set(os.listdir(ROOT)) - before - {".pytest_cache", "__pycache__"}
    assert not new, f"the tests wrote into the checkout: {sorted(new)}"


@pytest.fixture(autouse=True)
def no_run_left_active():
    """A test that leaves an MLflow run active in this process (or MLFLOW_RUN_ID set) fails here, by name, and the
    run is ended: otherwise every later in-process run fails with 'Run ... is already active' and the cause is lost."""
    env = os.environ.get("MLFLOW_RUN_ID")
    yield
    left = mlflow.active_run()
    while mlflow.active_run():
        mlflow.end_run("KILLED")
    leaked = os.environ.get("MLFLOW_RUN_ID") != env
    os.environ.pop("MLFLOW_RUN_ID", None)
    if env is not None:
        os.environ["MLFLOW_RUN_ID"] = env
    assert left is None, f"the test left run {left.info.run_id} active in this process"
    assert not leaked, "the test left MLFLOW_RUN_ID set"


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory):
    """One sqlite store for the session (creating one costs seconds); each test uses its own experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    yield uri


@pytest.fixture
def experiment(tracking_uri, request):
    """A fresh experiment name per test, in the session's store (runs_of(experiment) reads its runs)."""
    return request.node.name.replace("[", "_").replace("]", "")


# Training on the session's tiny synthetic sets, named by what each gives (tiny_cifar: 20 training images,
# cifar_dir: 80)
ONE_STEP = ["--batch-size", 20, "--subset-ratio", 0.5]  # tiny_cifar: 10 images, one step an epoch
THREE_STEPS = ["--batch-size", 4, "--subset-ratio", 0.5]  # tiny_cifar: 10 images, steps of 4, 4 and 2
FEW_IMAGES = ["--batch-size", 20, "--subset-ratio", 0.25]  # tiny_cifar: 5 images, cifar_dir: 20; one step an epoch
TWO_STEPS = ["--batch-size", 10]  # tiny_cifar's 20 images
HALF_OF_80 = ["--batch-size", 16, "--subset-ratio", 0.5]  # cifar_dir: 40 images, 3 steps an epoch


def point(monkeypatch, server):
    """Point this process's environment (and what it starts) at a stand-in server (fake_gemini, fake_openai)."""
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    return server


def calls(run):
    """A run's advisor/calls.json as rows (dicts), as logged: an empty cell is None."""
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/advisor/calls.json")
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def cli(*argv):
    """Run `lradvisor ...` in this process; return its exit code (argparse's errors exit 2 too)."""
    from lradvisor.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def runs_of(experiment, **kw):
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return mlflow.search_runs([exp.experiment_id], output_format="list", **kw)


def history(run_id, key):
    return [
        (m.step, m.value) for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)
    ]


def mlflow_run(experiment, env=None, entry_point="main", **params):
    """`mlflow run <repo> -e <entry_point> --env-manager local -P k=v ...` as a subprocess."""
    cmd = ["mlflow", "run", ROOT, "-e", entry_point, "--env-manager", "local", "--experiment-name", experiment]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    # In-process runs leave MLFLOW_EXPERIMENT_ID in os.environ (set_experiment does that); mlflow run
    # refuses it together with --experiment-name.
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


def store_holds(secret):
    """Whether the session's sqlite store (the database file and its write-ahead log) holds `secret` anywhere in its
    bytes. Read in another process: opening and closing the live database file here would drop this process's
    SQLite locks on it (POSIX locks belong to the process), and a sweep child ending its last connection could
    then checkpoint and delete the WAL under our open connections: "database disk image is malformed"."""
    store = mlflow.get_tracking_uri().removeprefix("sqlite:///")
    code = (
        "import os, sys; s = sys.argv[1].encode(); "
        "print(any(os.path.isfile(f) and s in open(f, 'rb').read() for f in (sys.argv[2], sys.argv[2] + '-wal')))"
    )
    out = subprocess.run([sys.executable, "-c", code, secret, store], capture_output=True, text=True, check=True).stdout
    return out.strip() == "True"


def free_port():
    """A loopback port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(d, port=None):
    """A real MLflow server (sqlite backend, proxied artifacts) on a loopback port (a given one: a restart), in its
    own process group; yields (url, process)."""
    port = port or free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(d / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{d}/mlflow.db",
            "--artifacts-destination",
            str(d / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not come up: " + open(d / "server.log").read()[-2000:])
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have stopped it already
            os.killpg(proc.pid, signal.SIGTERM)  # uvicorn's workers too, not only the main pid
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real MLflow server for the session (a server costs seconds to start)."""
    with mlflow_server(tmp_path_factory.mktemp("server")) as (url, _):
        yield url


@pytest.fixture
def remote(server, monkeypatch):
    """Point this test (and the processes it starts) at the session's server; back to the local store afterwards."""
    local = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    mlflow.set_tracking_uri(server)
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(local)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real local Ray head (`ray start --head`, 2 CPUs, no dashboard) in its own process group, for the Ray
    launcher and PBT; yields its address."""
    pytest.importorskip("ray")  # the optional extra; the README's test command installs it
    port = free_port()
    log_path = tmp_path_factory.mktemp("ray") / "head.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                "ray",
                "start",
                "--head",
                "--block",
                "--num-cpus=2",
                "--include-dashboard=false",
                f"--port={port}",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for _ in range(120):
            found = re.search(r"ray start --address='([^']+)'", log_path.read_text())
            if found:
                break
            assert proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.5)
        else:
            raise RuntimeError("ray head did not come up: " + log_path.read_text()[-2000:])
        yield found.group(1)  # Ray binds to this machine's own address; traffic stays on this machine
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # `ray start --block` can hang on SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
