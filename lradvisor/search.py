"""Classical controllers at the LLM's budget: Optuna's TPE or random search over the schedule's knobs, or Ray Tune's
Population Based Training over the LR, charged the epochs the LLM arms used; the winner is trained again on fresh
seeds as arm search_<method>, so that `compare` puts it next to the LLM arms.

    lradvisor search --method tpe --budget-epochs 40 --seeds 0,1,2 --dataset digits --lr 0.02 --batch-size 16

Records, all nested under one parent run `search-<id>` (tag search_id on every one):
    parent   role=search: params (method, budget source, ...), metrics budget_allowed, budget_used (epochs) and
             best_val_acc, tags best.<knob>; Optuna's optimisation-history and parameter-importance plots and its
             trials table (tpe, random), PBT's policy files and the winner's schedule (pbt)
    trials   role=trial (tpe, random): ordinary training runs on seeds 1000 + trial number, never the final seeds,
             with a validation holdout (> 0) that is all they are judged on; a pruned trial ends FINISHED with the
             tag `stopped_early`, a diverged one FAILED
    members  role=member (pbt): one run per member, the LR of each epoch as PBT set it
    winners  role=arm, arm=search_<method>: the best configuration (tpe, random) or the best member's LR schedule
             (pbt, schedule `file`) trained again on --seeds; compare's rows, with the search's epochs as budget
The budget counts every epoch a trial or member trained (its train_loss history: pruned, diverged and interrupted
trials count what they trained); a trial starts only if all its epochs fit in what is left, so budget_used never
exceeds budget_allowed. The winners' own runs are the evaluation, as the LLM arms' runs are, and are not charged.

The space of tpe and random, around the given --lr (the data set's known-good LR):
    lr         log-uniform in [lr/10, 10 lr]
    schedule   one of the ladder's: step, cosine, onecycle, linear, plateau
    step_size  integer in [1, epochs]          (step only)
    gamma      log-uniform in [0.03, 0.5]      (step and plateau)
    momentum   uniform in [0.8, 0.99]          (with --tune-momentum 1; else --momentum as given)
Trials report val_acc after every epoch: the pruner (median, or asha: successive halving) stops the ones behind.
The Optuna study lives in Optuna's own storage (--storage; auto: optuna.db beside an sqlite MLflow store, else in
the working folder. Not MLflow's own file: both keep an `alembic_version` table), so a rerun with the same
--search-id goes on where it stopped.

PBT: --population members start at LRs spread evenly in log scale over [lr/10, 10 lr] and train at a constant LR;
every --perturb-every epochs, all together (synchronous PBT), the bottom quarter copies a top-quarter member's
weights, optimizer and data order (train.snapshot) and perturbs its LR (x1.2 or x0.8, or resampled with
probability 0.25). The best member's lineage, read from the members' own records (whose state each took after
which epoch), gives the LR of every epoch, which the winners follow (--schedule-file); Ray Tune's
PopulationBasedTrainingReplay reads the same from its policy file as a cross-check (see pbt_search).
"""

import argparse
import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings

from lradvisor.arms import GROUPS, ARMS, UsageError, check_id

METHODS = ("tpe", "random", "pbt")
PRUNERS = ("none", "median", "asha")
LADDER = tuple(ARMS[a].get("schedule", "step") for a in GROUPS["ladder"])  # step, cosine, onecycle, linear, plateau
TRIAL_SEEDS = 1000  # trial n trains with seed 1000 + n; final seeds must lie below


class SearchError(Exception):
    """The search cannot give a winner (e.g. no trial finished); the message says why."""


# ----------------------------------------------------------------------------------------------------------
# checks (cheap: before the tracking server, the data or Ray)

def check_args(args):
    from lradvisor.sweep import parse_list
    if args.method not in METHODS:
        raise UsageError(f"unknown method {args.method!r}; valid: {', '.join(METHODS)}")
    if args.pruner not in PRUNERS:
        raise UsageError(f"unknown pruner {args.pruner!r}; valid: {', '.join(PRUNERS)}")
    if (args.budget_epochs > 0) == (args.budget_from != "none"):
        raise UsageError("give the budget one way: --budget-epochs N (> 0) or --budget-from sweep_id=ID")
    if args.budget_from != "none":
        key, _, value = args.budget_from.partition("=")
        if key != "sweep_id" or not value:
            raise UsageError(f"budget_from must be sweep_id=ID, got {args.budget_from!r}")
        check_id(value, "sweep_id")
    seeds = parse_list(args.seeds, "seeds", int)
    if any(not 0 <= s < TRIAL_SEEDS for s in seeds):
        raise UsageError(f"seeds must lie in [0, {TRIAL_SEEDS}): the search's trials train with seeds {TRIAL_SEEDS} "
                         "and up, so that the winner is judged on seeds no trial saw")
    if args.search_id != "new":
        check_id(args.search_id, "search_id")
    if not args.holdout > 0:
        raise UsageError(f"a search selects on a validation split: holdout must be in (0, 0.5), got {args.holdout}")
    if "," in args.dataset:
        raise UsageError(f"a search runs on one data set, got {args.dataset!r}; run one search per data set")
    if args.population < 2:
        raise UsageError(f"population must be >= 2, got {args.population}")
    if args.perturb_every < 1:
        raise UsageError(f"perturb_every must be >= 1 (epochs), got {args.perturb_every}")
    if args.tune_momentum not in (0, 1):
        raise UsageError(f"tune_momentum must be 0 or 1, got {args.tune_momentum}")
    if args.method == "pbt" and args.tune_momentum:
        raise UsageError("PBT here perturbs the LR only; tune_momentum is for tpe and random")
    if args.cpus_per_run <= 0:
        raise UsageError(f"cpus_per_run must be > 0, got {args.cpus_per_run}")
    if args.budget_epochs > 0:
        check_budget(args, args.budget_epochs)
    trial_args(args, "search_" + args.method, 0)  # every training parameter, checked as train checks it


def check_budget(args, allowed):
    need = args.epochs * (args.population if args.method == "pbt" else 1)
    if allowed < need:
        what = f"{args.population} members x {args.epochs} epochs" if args.method == "pbt" else \
            f"one trial of {args.epochs} epochs"
        raise UsageError(f"a budget of {allowed} epochs cannot pay for {what}; raise the budget or lower epochs"
                         + (" or population" if args.method == "pbt" else ""))


def trial_args(args, arm, seed, **knobs):
    """The training arguments of one trial, member or winner: train's own defaults, the search's training
    parameters, then the knobs; checked like `lradvisor train`'s. Exactly train's parameters: its params in MLflow
    are an ordinary run's."""
    from lradvisor.cli import build_parser, check_training_args
    ns = build_parser(bench=False).parse_args(["train"])
    for key, value in vars(args).items():
        if hasattr(ns, key) and key != "command":
            setattr(ns, key, value)
    ns.arm, ns.seed = arm, seed
    for key, value in knobs.items():
        setattr(ns, key, value)
    ns.command = "search"  # the search arms are only trained from here
    check_training_args(ns)
    return ns


# ----------------------------------------------------------------------------------------------------------
# the parent run and the budget

def budget_from_sweep(client, sweep_id):
    """(epochs, seconds, runs) of a sweep's LLM arms: every epoch of every finished run whose advisor is an LLM
    (gemini or openai), their training seconds, and how many runs."""
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, f"tags.sweep_id = '{sweep_id}' and attributes.status = 'FINISHED'",
                              max_results=5000)
    llm = [r for r in runs if r.data.params.get("arm.advisor") in ("gemini", "openai")]
    if not llm:
        raise UsageError(f"sweep {sweep_id!r} has no finished LLM-arm runs on {mlflow_uri()} to take a budget from; "
                         "give --budget-epochs N instead")
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
    return sum(len(client.get_metric_history(r.info.run_id, "train_loss"))
               for r in search_runs(client, exp_id, search_id) if r.data.tags.get("role") in ("trial", "member"))


def end_stray_runs(client, exp_id, search_id, status, why):
    """Runs of this search still RUNNING: a member whose Ray actor was stopped, or a trial of a search that was
    killed outright. They end `status` with the reason."""
    for r in search_runs(client, exp_id, search_id):
        if r.info.status == "RUNNING" and r.data.tags.get("role") != "search":
            client.set_tag(r.info.run_id, "failure_reason", why)
            client.set_terminated(r.info.run_id, status)


class Search:
    """What every part of one search needs: its args, id, the MLflow client, experiment and parent run."""

    def __init__(self, args):
        import mlflow
        from mlflow.tracking import MlflowClient
        self.args, self.client = args, MlflowClient()
        self.id = uuid.uuid4().hex[:8] if args.search_id == "new" else args.search_id
        self.arm = "search_" + args.method
        if args.budget_from != "none":
            self.allowed, self.seconds_ref, n = budget_from_sweep(self.client, args.budget_from.partition("=")[2])
            print(f"search {self.id}: budget {self.allowed} epochs, what the {n} LLM-arm runs of "
                  f"{args.budget_from} trained ({self.seconds_ref:.0f} s of training)")
        else:
            self.allowed, self.seconds_ref = args.budget_epochs, None
        check_budget(args, self.allowed)
        if os.environ.get("MLFLOW_RUN_ID"):  # inside `mlflow run`, whose run is the parent
            self.exp_id = self.client.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
        else:
            self.exp_id = mlflow.set_experiment(args.experiment).experiment_id
        # What makes it this search: a resume must match. The budget and the final seeds may grow (tags).
        self.params = {"method": args.method, "search_id": self.id, "dataset": args.dataset,
                       "epochs": args.epochs, "holdout": args.holdout, "search_seed": args.search_seed,
                       **({"population": args.population, "perturb_every": args.perturb_every} if args.method == "pbt"
                          else {"pruner": args.pruner, "tune_momentum": args.tune_momentum})}
        self.parent = self.open_parent()

    def open_parent(self):
        """The parent run: `mlflow run`'s, this search's from an earlier start (a resume), or a new one. A resume
        must be the same search: a parameter that differs is refused before anything runs."""
        env = os.environ.get("MLFLOW_RUN_ID")
        earlier = [r for r in search_runs(self.client, self.exp_id, self.id, "search") if r.info.run_id != env]
        for r in earlier:
            differ = {k: (r.data.params[k], str(v)) for k, v in self.params.items()
                      if k in r.data.params and k != "search_id" and not same(r.data.params[k], v)}
            if differ:
                k, (was, now) = next(iter(differ.items()))
                raise UsageError(f"search {self.id!r} already ran with {k}={was} (now {now}); resume it with the same "
                                 "parameters, or give a new --search-id")
        if self.args.method == "pbt" and search_runs(self.client, self.exp_id, self.id, "member"):
            raise UsageError(f"PBT search {self.id!r} already has members: a population cannot resume; give a new "
                             "--search-id")
        tags = {"search_id": self.id, "role": "search", "method": self.args.method, "budget_from": self.args.budget_from,
                "seeds": self.args.seeds, "mlflow.runName": f"search-{self.id}"}
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
        self.client.log_batch(run_id or self.parent, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def new_run(self, name, role, seed, **tags):
        """A run nested under the parent, for train.main (or a PBT member) to fill."""
        tags = {"mlflow.parentRunId": self.parent, "search_id": self.id, "method": self.args.method, "role": role,
                "seed": str(seed), **{k: str(v) for k, v in tags.items()}}
        return self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id

    def retrain(self, knobs, used, key):
        """The winner on every final seed, as ordinary runs of arm search_<method>. A seed this search already
        trained with the same winner (`key`, tag search_winner) is skipped: a resume; a resume that found another
        winner trains every seed with it."""
        from lradvisor import train
        from lradvisor.arms import run_name
        from lradvisor.sweep import parse_list
        done = {r.data.tags.get("seed") for r in search_runs(self.client, self.exp_id, self.id, "arm")
                if r.info.status == "FINISHED" and r.data.tags.get("search_winner") == key}
        for seed in parse_list(self.args.seeds, "seeds", int):
            if str(seed) in done:
                print(f"search {self.id}: seed {seed} already trained with the winner, not again")
                continue
            ns = trial_args(self.args, self.arm, seed, **knobs)
            run_id = self.new_run(run_name(self.arm, ns.dataset, seed), "arm", seed, arm=self.arm, search_winner=key)
            self.log({"search_epochs": used}, run_id)  # compare's budget column: what finding this schedule cost
            print(f"search {self.id}: the winner on seed {seed}")
            train.main(ns, run_id=run_id)

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


# ----------------------------------------------------------------------------------------------------------
# tpe and random: Optuna, ask and tell

def storage_url(args):
    """Optuna's storage: the one given, or optuna.db beside an sqlite MLflow store (else in the working folder)."""
    if args.storage != "auto":
        return args.storage
    uri = mlflow_uri()
    folder = os.path.dirname(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else "."
    return f"sqlite:///{os.path.abspath(os.path.join(folder, 'optuna.db'))}"


def suggest(trial, args):
    """One point of the space (see the module's docstring), as train's parameters."""
    knobs = {"lr": trial.suggest_float("lr", args.lr / 10, args.lr * 10, log=True),
             "schedule": trial.suggest_categorical("schedule", LADDER)}
    if knobs["schedule"] == "step":
        knobs["step_size"] = trial.suggest_int("step_size", 1, args.epochs)
    if knobs["schedule"] in ("step", "plateau"):
        knobs["gamma"] = trial.suggest_float("gamma", 0.03, 0.5, log=True)
    if args.tune_momentum:
        knobs["momentum"] = trial.suggest_float("momentum", 0.8, 0.99)
    return knobs


def optuna_search(s):
    import optuna
    from lradvisor import train
    args = s.args
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The trials try LRs away from the data set's known-good one on purpose; train's hint about it would repeat.
    warnings.filterwarnings("ignore", message=".* is best tried with ")
    trials_max = s.allowed // args.epochs
    pruner = {"none": optuna.pruners.NopPruner(),
              "median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
              "asha": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)}[args.pruner]
    storage = storage_url(args)
    study = optuna.create_study(study_name=f"search-{s.id}", storage=storage, pruner=pruner, direction="maximize",
                                load_if_exists=True)
    # Seeded by the trials so far: a resumed search draws new points, not its first ones again. TPE starts from
    # random points; Optuna's 10 would be every trial of a small budget, so a third of them here.
    seed = args.search_seed + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials_max // 3))) \
        if args.method == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    s.client.set_tag(s.parent, "optuna_storage", storage)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left by a search that was killed outright
    end_stray_runs(s.client, s.exp_id, s.id, "KILLED", "its search was killed before it could end this run")
    used = budget_used(s.client, s.exp_id, s.id)
    if study.trials:
        print(f"search {s.id}: {len(study.trials)} trials in {storage} already, {used} of {s.allowed} epochs used")
    while used + args.epochs <= s.allowed:
        trial = study.ask()
        knobs = suggest(trial, args)
        seed = TRIAL_SEEDS + trial.number
        ns = trial_args(args, s.arm, seed, **knobs)
        run_id = s.new_run(f"{s.arm}-trial{trial.number}", "trial", seed, trial=trial.number)
        trial.set_user_attr("run_id", run_id)
        seen = {}

        def on_epoch(epoch, metrics):  # the trial's validation accuracy is all the pruner and the sampler see
            seen["val_acc"] = metrics["val_acc"]
            trial.report(metrics["val_acc"], epoch)
            return "pruned by the search's pruner" if trial.should_prune() else None

        print(f"search {s.id}: trial {trial.number} " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                                 for k, v in knobs.items()))
        try:
            train.main(ns, run_id=run_id, on_epoch=on_epoch)
        except train.TrainingError as e:  # a configuration that diverged: the search goes on without it
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
        raise SearchError(f"no trial finished all {args.epochs} epochs within {s.allowed} epochs (every one was "
                          "pruned or failed); raise the budget, or use --pruner none")
    best = study.best_trial
    knobs = {k: v for k, v in best.params.items()}
    print(f"search {s.id}: best of {len(done)} finished trials ({len(study.trials)} in all, {used} of {s.allowed} "
          f"epochs): trial {best.number}, val_acc {best.value:.2f}%: {knobs}")
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
            for name, plot in (("optimization_history.png", ovm.plot_optimization_history),
                               ("param_importances.png", ovm.plot_param_importances)):
                try:
                    ax = plot(study)
                    ax.figure.savefig(os.path.join(folder, name), bbox_inches="tight", dpi=110)
                    plt.close(ax.figure)
                except Exception as e:  # importances need two finished trials that differ; say so, keep the rest
                    print(f"search {s.id}: Optuna drew no {name} ({type(e).__name__}: {e})")
            s.client.log_artifacts(s.parent, folder, "optuna")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# pbt: Ray Tune's PopulationBasedTraining; each member a class Trainable over train.py's pieces

class Member:
    """One PBT member as a Ray Tune Trainable (the class is made in pbt_search, where Ray is imported): step() trains
    one epoch at config["lr"] and logs it to the member's run; save/load_checkpoint are train.snapshot/restore, so
    an exploited member goes on with its donor's weights, optimizer state and data order."""

    def setup(self, config, job):
        import mlflow
        from mlflow.tracking import MlflowClient
        from lradvisor import arms, train
        from lradvisor.data import load
        from lradvisor.device import pick_device
        os.environ.update(job["env"])
        quiet_ray()
        mlflow.set_tracking_uri(job["env"]["MLFLOW_TRACKING_URI"])
        self.client, self.job, self.train = MlflowClient(), job, train
        device = pick_device(job["args"].device)
        if not hasattr(self, "data"):  # an actor reused for another member keeps the data it read
            self.data = load(job["args"].data_dir, job["args"].dataset)
        seed = TRIAL_SEEDS + config["member"]  # the first start; an exploited member takes its donor's state
        self.args = args = argparse.Namespace(**{**vars(job["args"]), "seed": seed, "lr": config["lr"]})
        (self.train_loader, self.val_loader, self.test_loader, self.model, self.opt, self.sched,
         self.autocast) = train.prepare(args, device, "constant", self.data)
        found = [r for r in search_runs(self.client, job["exp_id"], job["search_id"], "member")
                 if r.data.tags.get("trial") == self.trial_id]
        if found:  # a member paused or exploited and started again: the same run goes on
            self.run_id = found[0].info.run_id
        else:
            tags = {"mlflow.parentRunId": job["parent"], "search_id": job["search_id"], "method": "pbt",
                    "role": "member", "seed": str(seed), "trial": self.trial_id, "arm": "search_pbt"}
            self.run_id = self.client.create_run(job["exp_id"], run_name=f"search_pbt-member{config['member']}",
                                                 tags=tags).info.run_id
            spec = {**arms.resolve("search_pbt", schedule="constant"), "model": "none"}
            p = train.params_of(args, spec, device, *train.sizes(self.train_loader, self.val_loader, self.test_loader))
            self.client.log_batch(self.run_id, params=[param(k, v) for k, v in p.items()])

    def reset_config(self, new_config):
        """Ray Tune reuses this actor for another member (or this one, exploited): set up afresh, without the
        process start-up; the checkpoint it is given next brings the state."""
        Member.setup(self, new_config, self.job)  # ours: tune.with_parameters wraps setup to take the config alone
        return True

    def step(self):
        from mlflow.entities import Metric
        from lradvisor import schedules
        epoch = self.iteration + 1
        lr = self.config["lr"]
        schedules.override(self.sched, self.opt, lr)
        t0 = time.perf_counter()
        train_loss, train_acc, grad_norm, _ = self.train.train_epoch(self.model, self.opt, self.train_loader,
                                                                     self.autocast)
        if not math.isfinite(train_loss):  # diverged: the worst member, to be replaced at the next perturbation
            val_loss, val_acc, test_loss, test_acc = math.inf, 0.0, math.inf, 0.0
        else:
            val_loss, val_acc, _ = self.train.evaluate(self.model, self.val_loader, self.autocast)
            test_loss, test_acc, _ = self.train.evaluate(self.model, self.test_loader, self.autocast)
        m = {"lr": lr, "train_loss": train_loss, "train_acc": train_acc, "grad_norm": grad_norm, "val_loss": val_loss,
             "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
             "epoch_seconds": time.perf_counter() - t0}
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in m.items()])
        return {"val_acc": val_acc, "train_loss": train_loss, "test_acc": test_acc, "epoch": epoch}

    def save_checkpoint(self, checkpoint_dir):
        import torch
        state = self.train.snapshot(self.model, self.opt, self.sched, self.train_loader)
        torch.save({**state, "run_name": self.client.get_run(self.run_id).info.run_name, "run_id": self.run_id,
                    "trial": self.trial_id},
                   os.path.join(checkpoint_dir, "state.pt"))

    def load_checkpoint(self, checkpoint_dir):
        """Our own state after a pause, or a donor's (exploit): the run's tag `pbt_exploits` says whose, when."""
        import torch
        state = torch.load(os.path.join(checkpoint_dir, "state.pt"), map_location=self.train_loader.x.device,
                           weights_only=False)
        state["rng"] = state["rng"].cpu()  # a generator's state is a CPU tensor, whatever the device
        self.train.restore(state, self.model, self.opt, self.sched, self.train_loader)
        if state["trial"] != self.trial_id:  # said for people (pbt_exploits) and for lineage() (pbt_cloned)
            tags = self.client.get_run(self.run_id).data.tags
            now = f"after epoch {self.iteration}: the weights, optimizer and data order of {state['run_name']}"
            said = tags.get("pbt_exploits")
            self.client.set_tag(self.run_id, "pbt_exploits", f"{said}; {now}" if said else now)
            cloned = json.loads(tags.get("pbt_cloned", "[]")) + [[self.iteration, state["run_id"]]]
            self.client.set_tag(self.run_id, "pbt_cloned", json.dumps(cloned))


def lineage(client, run, epochs):
    """The LR of every epoch along the history of a member's weights, from the members' own records: its own LRs
    after the last time it took another member's state (tag pbt_cloned: [[after epoch, donor run id], ...]), the
    donor's lineage before."""
    own = {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.timestamp)}
    earlier = [(k, donor) for k, donor in json.loads(run.data.tags.get("pbt_cloned", "[]")) if k < epochs]
    if not earlier:
        return [own[e] for e in range(1, epochs + 1)]
    k, donor = max(earlier)
    return lineage(client, client.get_run(donor), k) + [own[e] for e in range(k + 1, epochs + 1)]


def replay_schedule(policy_file, lr, epochs):
    """The LR of every epoch as Ray Tune's PopulationBasedTrainingReplay reads a member's policy file (the member's
    own constant LR when it never took another's state)."""
    from ray.tune.schedulers import PopulationBasedTrainingReplay
    changes = []
    if os.path.exists(policy_file):
        replay = PopulationBasedTrainingReplay(policy_file)
        lr, changes = replay.config["lr"], list(replay._policy)  # [(the step after which, the new config)]
    schedule = []
    for epoch in range(1, epochs + 1):
        while changes and changes[0][0] < epoch:
            lr = changes.pop(0)[1]["lr"]
        schedule.append(lr)
    return schedule


def quiet_ray():
    """Ray Tune's INFO lines (every checkpoint, every file written) would bury ours; PBT's own exploit and explore
    lines stay: they are the search's decisions."""
    import logging
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.INFO)
    logging.getLogger("ray.tune.logger").setLevel(logging.ERROR)  # reused actors: "Remote file not found" per member


def pbt_search(s):
    import random
    from lradvisor import launch, tracking
    args = s.args
    import ray
    if not ray.is_initialized():  # the CLI connected before any run existed (sweep.check_resources)
        launch.ray_connect(args)
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    random.seed(args.search_seed)  # PBT draws its exploits and perturbations from Python's random
    quiet_ray()
    n = args.population
    lrs = [args.lr * 10 ** (-1 + 2 * (i + 0.5) / n) for i in range(n)]  # even in log scale over [lr/10, 10 lr]
    pbt = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=args.perturb_every,
                                  hyperparam_mutations={"lr": tune.loguniform(args.lr / 10, args.lr * 10)},
                                  synch=True)  # synchronous: every member trains exactly --epochs epochs
    member = type("PBTMember", (Member, tune.Trainable), {})
    # The tracking server's address and credentials (no LLM's: members ask none), as an argument: in no config Ray shows.
    env = {k: os.environ[k] for k in launch.FORWARD if k in os.environ and k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = mlflow_uri()
    job = {"args": trial_args(args, s.arm, TRIAL_SEEDS, schedule="constant", data_dir=os.path.abspath(args.data_dir)),
           "env": env, "exp_id": s.exp_id, "search_id": s.id, "parent": s.parent}
    trainable = tune.with_resources(tune.with_parameters(member, job=job),
                                    {"cpu": args.cpus_per_run, "gpu": float(args.gpus_per_run)})
    folder = tempfile.mkdtemp(prefix=f"lradvisor-pbt-{s.id}-")
    # Ctrl-C: Tune's own handler would stop the population "gracefully" and return as if it had finished; ours
    # raises, the runs end KILLED, and no winner is trained from half a search.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no banner tables, no TensorBoard hint
    tracking.sqlite_for_many_writers()  # members write to a local sqlite store at once
    try:
        tuner = tune.Tuner(trainable, param_space={"member": tune.grid_search(list(range(n))),
                                                   "lr": tune.sample_from(lambda config: lrs[config["member"]])},
                           tune_config=tune.TuneConfig(scheduler=pbt, metric="val_acc", mode="max", reuse_actors=True),
                           run_config=tune.RunConfig(name=f"pbt-{s.id}", storage_path=folder, verbose=0,
                                                     stop={"training_iteration": args.epochs},
                                                     # a member that fails ends the search: synchronous PBT would
                                                     # otherwise wait for it forever
                                                     failure_config=tune.FailureConfig(fail_fast=True)))
        print(f"search {s.id}: PBT, {n} members from LR " + ", ".join(f"{x:.3g}" for x in lrs)
              + f", perturbing every {args.perturb_every} epochs")
        grid = tuner.fit()
        for r in search_runs(s.client, s.exp_id, s.id, "member"):  # members never end their own runs (see Member)
            steps = [m.step for m in s.client.get_metric_history(r.info.run_id, "train_loss")]
            if r.info.status == "RUNNING" and steps and max(steps) == args.epochs:
                s.client.set_terminated(r.info.run_id, "FINISHED")
        end_stray_runs(s.client, s.exp_id, s.id, "FAILED", "its Ray Tune trial ended before its last epoch")
        if grid.errors:
            last = [line for line in str(grid.errors[0]).splitlines() if line.strip()][-1]
            raise SearchError(f"a PBT member failed ({last}); the population stopped; nothing was trained again")
        best = grid.get_best_result(metric="val_acc", mode="max", scope="last")
        policy = [os.path.join(grid.experiment_path, f) for f in os.listdir(grid.experiment_path)
                  if f.startswith("pbt_") and f.endswith(".txt")]
        runs = {r.data.tags["trial"]: r for r in search_runs(s.client, s.exp_id, s.id, "member")}
        winner = runs[best.metrics["trial_id"]]
        schedule = lineage(s.client, winner, args.epochs)
        # Ray Tune's replay of the same member, as a cross-check: under synchronous PBT with paused members its
        # policy log has recorded a clone's iteration one epoch short (seen here), and its replay then moves an
        # LR change by an epoch. The members' own records decide; a disagreement is said and tagged.
        ray_said = replay_schedule(os.path.join(grid.experiment_path, f"pbt_policy_{best.metrics['trial_id']}.txt"),
                                   best.config["lr"], args.epochs)
        if not all(math.isclose(a, b) for a, b in zip(schedule, ray_said)):
            print(f"search {s.id}: Ray Tune's PopulationBasedTrainingReplay reads the winner's LRs as "
                  + ", ".join(f"{x:.3g}" for x in ray_said) + "; its members' records say otherwise and are followed")
            s.client.set_tag(s.parent, "pbt_replay_disagrees", json.dumps(ray_said))
        with open(os.path.join(folder, "schedule.json"), "w") as f:
            json.dump({"lr": schedule}, f)
        for path in policy:
            s.client.log_artifact(s.parent, path, "pbt")
        s.client.log_artifact(s.parent, os.path.join(folder, "schedule.json"), "pbt")
        used = budget_used(s.client, s.exp_id, s.id)
        print(f"search {s.id}: best member {best.metrics['trial_id']} (val_acc {best.metrics['val_acc']:.2f}%), "
              f"{used} of {s.allowed} epochs; its LR by epoch: " + ", ".join(f"{x:.3g}" for x in schedule))
        s.finish(used, best.metrics["val_acc"], {"member": best.metrics["trial_id"], "lr_schedule": schedule})
        keep = os.path.join(tempfile.gettempdir(), f"lradvisor-pbt-{s.id}-schedule.json")
        shutil.copy(os.path.join(folder, "schedule.json"), keep)
        # lr: the param says what epoch 1 trains at
        return {"schedule_file": keep, "lr": schedule[0]}, used, json.dumps(schedule)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        ray.shutdown()


def main(args):
    """Validated args in: the search, then its winner on the final seeds. 0 when all of it finished."""
    from lradvisor import tracking
    s = Search(args)
    print(f"search {s.id}: {args.method} on {args.dataset}, budget {s.allowed} epochs of trials, winner on seeds "
          f"{args.seeds}; parent run {s.parent}")
    with tracking.interrupts_end_runs():
        try:
            knobs, used, key = (pbt_search if args.method == "pbt" else optuna_search)(s)
            s.retrain(knobs, used, key)
        except BaseException as e:
            killed = isinstance(e, (KeyboardInterrupt, SystemExit))
            with tracking.signals_held():
                status = "KILLED" if killed else "FAILED"
                end_stray_runs(s.client, s.exp_id, s.id, status, f"the search ended {status}")
                s.client.set_tag(s.parent, "failure_reason", str(e) or "interrupted" if killed else f"{type(e).__name__}: {e}")
                s.client.set_terminated(s.parent, status)
                if killed and tracking.UNDER_MLFLOW_RUN and s.parent == os.environ.get("MLFLOW_RUN_ID"):
                    tracking._outlast_launcher(status, s.parent)  # `mlflow run` would mark it FAILED after us
            raise
    s.client.set_terminated(s.parent, "FINISHED")
    name = s.client.get_experiment(s.exp_id).name
    print(f"search {s.id}: done; compare: lradvisor compare --experiment {name}\n"
          f"  view: {tracking.ui_link(s.exp_id, s.parent)}")
    return 0
