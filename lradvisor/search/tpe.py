"""tpe and random: Optuna's TPESampler or RandomSampler over the schedule, asked and told one trial at a time; each
trial an ordinary training run (engine/run.py) judged on its validation accuracy after every epoch by a pruner."""

import json
import os
import shutil
import tempfile
import warnings

from lradvisor.arms import ARMS, GROUPS
from lradvisor.config import TRIAL_SEEDS
from lradvisor.errors import SearchError, TrainingError
from lradvisor.search.common import budget_used, end_stray_runs, mlflow_uri

LADDER = tuple(ARMS[a].get("schedule", "step") for a in GROUPS["ladder"])  # step, cosine, onecycle, linear, plateau


def storage_url(cfg):
    """Optuna's storage: the one given, or optuna.db beside an sqlite MLflow store (else in the working folder)."""
    if cfg.storage != "auto":
        return cfg.storage
    uri = mlflow_uri()
    folder = os.path.dirname(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else "."
    return f"sqlite:///{os.path.abspath(os.path.join(folder, 'optuna.db'))}"


def suggest(trial, cfg):
    """One point of the space (see the module's docstring), as train's parameters."""
    knobs = {
        "lr": trial.suggest_float("lr", cfg.train.lr / 10, cfg.train.lr * 10, log=True),
        "schedule": trial.suggest_categorical("schedule", LADDER),
    }
    if knobs["schedule"] == "step":
        knobs["step_size"] = trial.suggest_int("step_size", 1, cfg.train.epochs)
    if knobs["schedule"] in ("step", "plateau"):
        knobs["gamma"] = trial.suggest_float("gamma", 0.03, 0.5, log=True)
    if cfg.tune_momentum:
        knobs["momentum"] = trial.suggest_float("momentum", 0.8, 0.99)
    return knobs


def optuna_search(s):
    import optuna

    from lradvisor.engine import run

    cfg = s.cfg
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The trials try LRs away from the data set's known-good one on purpose; train's hint about it would repeat.
    warnings.filterwarnings("ignore", message=".* is best tried with ")
    trials_max = s.allowed // cfg.train.epochs
    pruner = {
        "none": optuna.pruners.NopPruner(),
        "median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "asha": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    }[cfg.pruner]
    storage = storage_url(cfg)
    study = optuna.create_study(
        study_name=f"search-{s.id}", storage=storage, pruner=pruner, direction="maximize", load_if_exists=True
    )
    # Seeded by the trials so far: a resumed search draws new points, not its first ones again. TPE starts from
    # random points; Optuna's 10 would be every trial of a small budget, so a third of them here.
    seed = cfg.search_seed + len(study.trials)
    study.sampler = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials_max // 3)))
        if cfg.method == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    s.client.set_tag(s.parent, "optuna_storage", storage)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left by a search that was killed outright
    end_stray_runs(s.client, s.exp_id, s.id, "KILLED", "its search was killed before it could end this run")
    used = budget_used(s.client, s.exp_id, s.id)
    if study.trials:
        print(f"search {s.id}: {len(study.trials)} trials in {storage} already, {used} of {s.allowed} epochs used")
    while used + cfg.train.epochs <= s.allowed:
        trial = study.ask()
        knobs = suggest(trial, cfg)
        seed = TRIAL_SEEDS + trial.number
        trial_cfg = cfg.trial(s.arm, seed, **knobs)
        run_id = s.new_run(f"{s.arm}-trial{trial.number}", "trial", seed, trial=trial.number)
        trial.set_user_attr("run_id", run_id)
        seen = {}

        def on_epoch(epoch, metrics):  # the trial's validation accuracy is all the pruner and the sampler see
            seen["val_acc"] = metrics["val_acc"]
            trial.report(metrics["val_acc"], epoch)
            return "pruned by the search's pruner" if trial.should_prune() else None

        print(
            f"search {s.id}: trial {trial.number} "
            + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in knobs.items())
        )
        try:
            run.main(trial_cfg, run_id=run_id, on_epoch=on_epoch)
        except TrainingError as e:  # a configuration that diverged: the search goes on without it
            print(f"search {s.id}: trial {trial.number} failed: {e}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            pruned = "stopped_early" in s.client.get_run(run_id).data.tags
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, seen["val_acc"])
        used = budget_used(s.client, s.exp_id, s.id)
        s.log({"budget_used": used}, step=trial.number + 1)  # step: trials so far
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise SearchError(
            f"no trial finished all {cfg.train.epochs} epochs within {s.allowed} epochs (every one was "
            "pruned or failed); raise the budget, or use --pruner none"
        )
    best = study.best_trial
    knobs = {k: v for k, v in best.params.items()}
    print(
        f"search {s.id}: best of {len(done)} finished trials ({len(study.trials)} in all, {used} of {s.allowed} "
        f"epochs): trial {best.number}, val_acc {best.value:.2f}%: {knobs}"
    )
    optuna_artifacts(s, study)
    s.finish(used, best.value, {**knobs, "trial": best.number}, step=len(study.trials))
    return knobs, used, json.dumps(knobs, sort_keys=True)


def optuna_artifacts(s, study):
    """Optuna's own plots (optuna.visualization.matplotlib) and its trials table, as the parent's artifacts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder = tempfile.mkdtemp(prefix="lradvisor-search-")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental", "few trials for importances", pandas': Optuna's, not ours
            study.trials_dataframe().to_csv(os.path.join(folder, "trials.csv"), index=False)
            for name, plot in (
                ("optimization_history.png", ovm.plot_optimization_history),
                ("param_importances.png", ovm.plot_param_importances),
            ):
                try:
                    ax = plot(study)
                    ax.figure.savefig(os.path.join(folder, name), bbox_inches="tight", dpi=110)
                    plt.close(ax.figure)
                except Exception as e:  # importances need two finished trials that differ; say so, keep the rest
                    print(f"search {s.id}: Optuna drew no {name} ({type(e).__name__}: {e})")
            s.client.log_artifacts(s.parent, folder, "optuna")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
