"""Shared fixtures: a tiny synthetic CIFAR-10 in the real format, and a private MLflow tracking store.

Everything goes through the real entry points: `python scripts/make_fake_cifar.py`, the CLI
(`lradvisor.cli.main`, in-process for speed) and `mlflow run` (as a subprocess).
"""

import os
import subprocess
import sys

import mlflow
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_fake_cifar.py"), "--out", str(out),
                    "--train-per-class", "8", "--test-per-class", "4"], check=True, capture_output=True)
    return str(out)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory):
    """One sqlite store for the session (creating one costs seconds); each test uses its own experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    yield uri


@pytest.fixture
def experiment(tracking_uri, request):
    """A fresh experiment name per test, and its runs as a helper."""
    return request.node.name.replace("[", "_").replace("]", "")


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
    return [(m.step, m.value) for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


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
