"""What every part of a search shares: its parent run, its budget of epochs, and the runs nested under it."""

import os
import time
import uuid

from lradvisor.arms import LLMS
from lradvisor.errors import UsageError


def budget_from_sweep(client, sweep_id):
    """(epochs, seconds, runs) of a sweep's LLM arms: every epoch of every finished run whose advisor is an LLM
    (gemini or openai), their training seconds, and how many runs."""
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        exp_ids, f"tags.sweep_id = '{sweep_id}' and attributes.status = 'FINISHED'", max_results=5000
    )
    llm = [r for r in runs if r.data.params.get("arm.advisor") in LLMS]
    if not llm:
        raise UsageError(
            f"sweep {sweep_id!r} has no finished LLM-arm runs on {mlflow_uri()} to take a budget from; "
            "give --budget-epochs N instead"
        )
    epochs = sum(len(client.get_metric_history(r.info.run_id, "train_loss")) for r in llm)
    seconds = sum(r.data.metrics.get("train_seconds", 0.0) for r in llm)
    return epochs, seconds, len(llm)


def mlflow_uri():
    import mlflow

    return mlflow.get_tracking_uri()


def search_runs(client, exp_id, search_id, role=None):
    flt = f"tags.search_id = '{search_id}'" + (f" and tags.role = '{role}'" if role else "")
    return client.search_runs([exp_id], flt, max_results=5000)


def budget_used(client, exp_id, search_id):
    """Epochs trained by this search's trials and members, from their records."""
    return sum(
        len(client.get_metric_history(r.info.run_id, "train_loss"))
        for r in search_runs(client, exp_id, search_id)
        if r.data.tags.get("role") in ("trial", "member")
    )


def end_stray_runs(client, exp_id, search_id, status, why):
    """Runs of this search still RUNNING: a member whose Ray actor was stopped, or a trial of a search that was
    killed outright. They end `status` with the reason."""
    for r in search_runs(client, exp_id, search_id):
        if r.info.status == "RUNNING" and r.data.tags.get("role") != "search":
            client.set_tag(r.info.run_id, "failure_reason", why)
            client.set_terminated(r.info.run_id, status)


class Search:
    """What every part of one search needs: its config, id, the MLflow client, experiment and parent run."""

    def __init__(self, cfg):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.cfg, self.client = cfg, MlflowClient()
        self.id = uuid.uuid4().hex[:8] if cfg.search_id == "new" else cfg.search_id
        self.arm = "search_" + cfg.method
        if cfg.budget_from != "none":
            self.allowed, self.seconds_ref, n = budget_from_sweep(self.client, cfg.budget_from.partition("=")[2])
            print(
                f"search {self.id}: budget {self.allowed} epochs, what the {n} LLM-arm runs of "
                f"{cfg.budget_from} trained ({self.seconds_ref:.0f} s of training)"
            )
        else:
            self.allowed, self.seconds_ref = cfg.budget_epochs, None
        cfg.check_budget(self.allowed)
        if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`, whose run is the parent
            self.exp_id = self.client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
        else:
            self.exp_id = mlflow.set_experiment(cfg.experiment).experiment_id
        # What makes it this search: a resume must match. The budget and the final seeds may grow (tags).
        self.params = {
            "method": cfg.method,
            "search_id": self.id,
            "dataset": cfg.train.dataset,
            "epochs": cfg.train.epochs,
            "holdout": cfg.train.holdout,
            "search_seed": cfg.search_seed,
            **(
                {"population": cfg.population, "perturb_every": cfg.perturb_every}
                if cfg.method == "pbt"
                else {"pruner": cfg.pruner, "tune_momentum": cfg.tune_momentum}
            ),
        }
        self.parent = self.open_parent()

    def open_parent(self):
        """The parent run: `mlflow run`'s, this search's from an earlier start (a resume), or a new one. A resume
        must be the same search: a parameter that differs is refused before anything runs."""
        env = os.environ.get("MLFLOW_RUN_ID")
        earlier = [r for r in search_runs(self.client, self.exp_id, self.id, "search") if r.info.run_id != env]
        for r in earlier:
            differ = {
                k: (r.data.params[k], str(v))
                for k, v in self.params.items()
                if k in r.data.params and k != "search_id" and not same(r.data.params[k], v)
            }
            if differ:
                k, (was, now) = next(iter(differ.items()))
                raise UsageError(
                    f"search {self.id!r} already ran with {k}={was} (now {now}); resume it with the same "
                    "parameters, or give a new --search-id"
                )
        if self.cfg.method == "pbt" and search_runs(self.client, self.exp_id, self.id, "member"):
            raise UsageError(
                f"PBT search {self.id!r} already has members: a population cannot resume; give a new --search-id"
            )
        tags = {
            "search_id": self.id,
            "role": "search",
            "method": self.cfg.method,
            "budget_from": self.cfg.budget_from,
            "seeds": self.cfg.seeds,
            "mlflow.runName": f"search-{self.id}",
        }
        if env:
            run_id = env
        elif earlier:
            run_id = earlier[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            if "failure_reason" in earlier[0].data.tags:  # it ended KILLED or FAILED; it is running again
                self.client.delete_tag(run_id, "failure_reason")
            print(f"search {self.id}: resuming (run {run_id})")
        else:
            run_id = self.client.create_run(self.exp_id, run_name=f"search-{self.id}", tags=tags).info.run_id
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)
        have = self.client.get_run(run_id).data.params
        self.client.log_batch(run_id, params=[param(k, v) for k, v in self.params.items() if k not in have])
        metrics = {"budget_allowed": self.allowed}
        if self.seconds_ref is not None:
            metrics["budget_seconds_reference"] = self.seconds_ref
        self.log(metrics, run_id)
        return run_id

    def log(self, metrics, run_id=None, step=0):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id or self.parent, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def new_run(self, name, role, seed, **tags):
        """A run nested under the parent, for engine/run.py (or a PBT member) to fill."""
        tags = {
            "mlflow.parentRunId": self.parent,
            "search_id": self.id,
            "method": self.cfg.method,
            "role": role,
            "seed": str(seed),
            **{k: str(v) for k, v in tags.items()},
        }
        return self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id

    def retrain(self, knobs, used, key):
        """The winner on every final seed, as ordinary runs of arm search_<method>. A seed this search already
        trained with the same winner (`key`, tag search_winner) is skipped: a resume; a resume that found another
        winner trains every seed with it."""
        from lradvisor.arms import run_name
        from lradvisor.engine import run

        done = {
            r.data.tags.get("seed")
            for r in search_runs(self.client, self.exp_id, self.id, "arm")
            if r.info.status == "FINISHED" and r.data.tags.get("search_winner") == key
        }
        for seed in self.cfg.seed_list():
            if str(seed) in done:
                print(f"search {self.id}: seed {seed} already trained with the winner, not again")
                continue
            trial = self.cfg.trial(self.arm, seed, **knobs)
            run_id = self.new_run(run_name(self.arm, trial.dataset, seed), "arm", seed, arm=self.arm, search_winner=key)
            self.log({"search_epochs": used}, run_id)  # compare's budget column: what finding this schedule cost
            print(f"search {self.id}: the winner on seed {seed}")
            run.main(trial, run_id=run_id)

    def finish(self, used, best_value, best, step=0):
        with_tags = {f"best.{k}": v for k, v in best.items()}
        self.log({"budget_used": used, "best_val_acc": best_value}, step=step)
        for k, v in with_tags.items():
            self.client.set_tag(self.parent, k, str(v))


def same(recorded, value):
    """A recorded param (a string, as `mlflow run` or we wrote it) and a value: equal as numbers where both are."""
    try:
        return float(recorded) == float(value)
    except (TypeError, ValueError):
        return recorded == str(value)


def param(k, v):
    from mlflow.entities import Param

    return Param(k, str(v))
