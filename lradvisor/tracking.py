"""MLflow plumbing: attach to the run `mlflow run` made (or make one), log params once, end runs honestly."""

import os
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


def end_failed(status, reason, exc=None):
    """End the active run as FAILED or KILLED, with the reason as a tag and the traceback as an artifact.
    Logging problems here must not hide the original error, so they are only printed."""
    try:
        mlflow.set_tag("failure_reason", reason[:5000])
        if exc is not None:
            mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt")
    except Exception as e:  # the tracking server may be the thing that failed
        print(f"lradvisor: could not record the failure in MLflow: {e}")
    finally:
        mlflow.end_run(status)
