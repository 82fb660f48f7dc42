"""The settings of the study drivers whose children are TrainConfigs: a sweep (arms x data sets x seeds) and a search
(a classical controller at the LLM's budget)."""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from lradvisor.arms import ARMS, GROUPS, unknown_arm
from lradvisor.config.fields import (
    ADVISOR,
    LAUNCHERS,
    METHODS,
    PRUNERS,
    TRIAL_SEEDS,
    finite,
    parse_list,
    rules,
    setting,
)
from lradvisor.config.train import TrainConfig
from lradvisor.errors import UsageError


@dataclass(frozen=True)
class SweepConfig:
    """Arms x data sets x seeds (x LLM models x temperatures for the LLM arms), each child run a TrainConfig."""

    PER_CHILD: ClassVar = ("arm", "seed", "dataset", "llm_model", "temperature", "experiment")  # the rest is shared
    arms: str = setting(
        "published",
        "comma-separated arms, or groups of them: " + ", ".join(f"{k} ({','.join(v)})" for k, v in GROUPS.items()),
        "sweep",
    )
    seeds: str = setting("0", "comma-separated seeds; every arm runs with each", "sweep")
    sweep_id: str = setting(
        "new",
        "id tagging the sweep's runs (letters, digits, _ . -); reuse one to resume; new: a generated one",
        "sweep",
        unset="new",
    )
    parallel: str = setting(
        "auto",
        "local launcher: runs at once, as separate processes; auto: 1 on CPU, on CUDA as many per GPU as fit (capped)",
        "sweep",
    )
    launcher: str = setting("local", "local (processes on this machine) or ray (one Ray task per run)", "sweep")
    ray_address: str = setting(
        "auto",
        "ray: auto (RAY_ADDRESS or the cluster `ray start` made here), HOST:PORT, or "
        "local (a private instance for this sweep)",
        "sweep",
    )
    gpus_per_run: str = setting(
        "auto",
        "ray: GPUs per run, fractions pack several runs on a GPU (0.25 = four); auto: 1 "
        "if the cluster has GPUs, else 0",
        "sweep",
    )
    cpus_per_run: float = setting(1.0, "ray: CPUs per run", "sweep")
    # in the place of the child's dataset, llm_model and temperature: lists, crossed
    dataset: str = setting(
        "cifar10",
        "comma list of data sets, crossed with arms x seeds: cifar10, cifar100, digits "
        "(scikit-learn's bundled 8x8 digits, no download)",
        replaces="dataset",
    )
    llm_models: str = setting(
        "auto",
        "comma list of models each LLM arm asks: names from --models, provider:model "
        "(gemini:gemini-3.5-flash, openai:gpt-5-mini), or auto (as --llm-model auto)",
        ADVISOR,
        unset="auto",
        replaces="llm_model",
    )
    temperatures: str = setting(
        "1.0", "comma list of sampling temperatures, crossed with --llm-models", ADVISOR, replaces="temperature"
    )
    until_decided: int = setting(
        0,
        "1: rounds of seeds (0, 1, 2, ...) until every arm's anytime-valid confidence "
        "sequence against the baseline is decided, instead of --seeds",
        "sequential verdicts",
        const=1,
    )
    min_seeds: int = setting(3, "until_decided: the first round's seeds; no verdict before them", "sequential verdicts")
    max_seeds: int = setting(
        10, "until_decided: an arm still undecided at this many seeds is inconclusive", "sequential verdicts"
    )
    alpha: float = setting(
        0.05,
        "until_decided: the error rate of all the arms' verdicts together (each arm's sequence at alpha / arms)",
        "sequential verdicts",
    )
    margin: float = setting(
        0.0,
        "until_decided: points; an arm whose whole sequence lies within ±margin is equivalent (0: never)",
        "sequential verdicts",
    )
    experiment: str = setting("lradvisor", "MLflow experiment (ignored inside `mlflow run`, which picks it)", None)
    train: TrainConfig = TrainConfig()  # what every child shares: all but PER_CHILD

    def arm_list(self):
        """Arm names, with groups (published, ladder, controls) expanded in place."""
        expanded = ",".join(",".join(GROUPS.get(a.strip(), [a.strip()])) for a in str(self.arms).split(","))
        arms = parse_list(expanded, "arms")
        bad = [a for a in arms if a not in ARMS]
        if bad:
            raise UsageError(f"{unknown_arm(*bad)}; groups: {', '.join(GROUPS)}")
        return arms

    def dataset_list(self):
        from lradvisor.data.registry import DATASETS

        return parse_list(self.dataset, "dataset", valid=list(DATASETS))

    def seed_list(self):
        return parse_list(self.seeds, "seeds", int)

    def llm_axis(self):
        """(llm_model, temperature) pairs every LLM arm is crossed with."""
        return [
            (m, t)
            for m in parse_list(self.llm_models, "llm_models")
            for t in parse_list(self.temperatures, "temperatures", float)
        ]

    def child(self, arm, dataset, seed, llm_model="auto", temperature=1.0):
        return dataclasses.replace(
            self.train,
            arm=arm,
            dataset=dataset,
            seed=seed,
            llm_model=llm_model,
            temperature=temperature,
            experiment=self.experiment,
        )

    def check(self):
        """Everything a child would refuse that costs nothing to check: before the data, the device or Ray."""
        from lradvisor.arms import check_id

        finite(self)
        arms, datasets = self.arm_list(), self.dataset_list()
        self.seed_list()
        axis = self.llm_axis()
        try:
            gpus_ok = self.gpus_per_run == "auto" or float(self.gpus_per_run) >= 0
        except ValueError:
            gpus_ok = False
        rules(
            [
                (
                    self.parallel == "auto" or (self.parallel.isdigit() and int(self.parallel) >= 1),
                    f"parallel must be auto or an integer >= 1, got {self.parallel!r}",
                ),
                (self.launcher in LAUNCHERS, f"unknown launcher {self.launcher!r}; valid: {', '.join(LAUNCHERS)}"),
                (self.cpus_per_run > 0, f"cpus_per_run must be > 0, got {self.cpus_per_run}"),
                (gpus_ok, f"gpus_per_run must be auto or a number >= 0, got {self.gpus_per_run!r}"),
            ]
        )
        if self.sweep_id != "new":
            check_id(self.sweep_id, "sweep_id")
        rules(
            [
                (self.until_decided in (0, 1), f"until_decided must be 0 or 1, got {self.until_decided}"),
                (
                    not self.until_decided or self.seeds == "0",
                    "until_decided draws seeds 0, 1, 2, ... itself: leave "
                    "seeds out (set min_seeds and max_seeds instead)",
                ),
                (
                    not self.until_decided or "baseline" in arms,
                    "until_decided measures every arm against the baseline: add baseline to arms",
                ),
                (not self.until_decided or len(arms) > 1, "until_decided needs an arm besides the baseline"),
                (self.min_seeds >= 2, f"min_seeds must be >= 2 (pairs needed for a sequence), got {self.min_seeds}"),
                (self.max_seeds >= self.min_seeds, f"max_seeds must be >= min_seeds, got {self.max_seeds}"),
                (0 < self.alpha < 1, f"alpha must be in (0, 1), got {self.alpha}"),
                (self.margin >= 0, f"margin must be >= 0 (points), got {self.margin}"),
            ]
        )
        for arm in arms:  # every child as train would check it
            for llm_model, temperature in axis:
                self.child(arm, datasets[0], 0, llm_model, temperature).check()
        return self


@dataclass(frozen=True)
class SearchConfig:
    """A search (Optuna TPE / random, or Ray Tune PBT) over the schedule at a budget of epochs; its trials and its
    winner are TrainConfigs."""

    NOT_SEARCHED: ClassVar = ("arm", "seed", "schedule", "schedule_file", "experiment")  # the search sets these
    method: str = setting(
        "tpe", "tpe (Optuna's TPESampler), random (RandomSampler) or pbt (Ray Tune's PopulationBasedTraining)", "search"
    )
    budget_epochs: int = setting(
        0, "epochs the trials (or PBT members) may train in all, pruned ones included", "search"
    )
    budget_from: str = setting(
        "none",
        "or sweep_id=ID: the epochs the LLM arms of that sweep trained (advisor gemini or openai)",
        "search",
        unset="none",
    )
    search_id: str = setting(
        "new",
        "id of the search (letters, digits, _ . -); reuse one to resume its Optuna study; new: a generated one",
        "search",
    )
    seeds: str = setting(
        "0", "comma-separated seeds the winner is trained on (the sweep's; trials use 1000 and up)", "search"
    )
    pruner: str = setting(
        "median",
        "tpe/random: none, median (MedianPruner) or asha (SuccessiveHalvingPruner), on each epoch's val_acc",
        "search",
    )
    tune_momentum: int = setting(0, "tpe/random: 1 searches momentum in [0.8, 0.99] too", "search")
    storage: str = setting(
        "auto",
        "tpe/random: Optuna storage URL (sqlite:///FILE or an RDB URL); auto: optuna.db "
        "beside an sqlite MLflow store, else ./optuna.db",
        "search",
        unset="auto",
    )
    search_seed: int = setting(0, "seed of the sampler (tpe, random) or of PBT's choices", "search")
    population: int = setting(4, "pbt: members trained at once", "search")
    perturb_every: int = setting(2, "pbt: epochs between exploit/explore steps", "search")
    ray_address: str = setting(
        "auto",
        "pbt: auto (RAY_ADDRESS or the cluster `ray start` made here), HOST:PORT, or local (a private instance)",
        "search",
    )
    gpus_per_run: str = setting(
        "auto",
        "pbt: GPUs per member, fractions pack several on a GPU; auto: 1 if the cluster has GPUs, else 0",
        "search",
    )
    cpus_per_run: float = setting(1.0, "pbt: CPUs per member", "search")
    experiment: str = setting("lradvisor", "MLflow experiment (ignored inside `mlflow run`, which picks it)", None)
    # The training settings of every trial: a search selects on a validation split, so holdout defaults to 0.1.
    train: TrainConfig = TrainConfig(holdout=0.1)
    TRAIN_HELP: ClassVar = {"holdout": "(a search: > 0, what trials are judged on) "}  # said before the field's help

    def seed_list(self):
        return parse_list(self.seeds, "seeds", int)

    def trial(self, arm, seed, **knobs):
        """The TrainConfig of a trial, member or winner: the search's training settings and the knobs, checked as
        `lradvisor train` checks its own; its params in MLflow are an ordinary run's."""
        return dataclasses.replace(self.train, arm=arm, seed=seed, experiment=self.experiment, **knobs).check(True)

    def check(self):
        """Every rule that costs nothing, before the tracking server, the data or Ray."""
        from lradvisor.arms import check_id

        finite(self)
        rules(
            [
                (self.method in METHODS, f"unknown method {self.method!r}; valid: {', '.join(METHODS)}"),
                (self.pruner in PRUNERS, f"unknown pruner {self.pruner!r}; valid: {', '.join(PRUNERS)}"),
                (
                    (self.budget_epochs > 0) != (self.budget_from != "none"),
                    "give the budget one way: --budget-epochs N (> 0) or --budget-from sweep_id=ID",
                ),
            ]
        )
        if self.budget_from != "none":
            key, _, value = self.budget_from.partition("=")
            rules([(key == "sweep_id" and value, f"budget_from must be sweep_id=ID, got {self.budget_from!r}")])
            check_id(value, "sweep_id")
        rules(
            [
                (
                    all(0 <= s < TRIAL_SEEDS for s in self.seed_list()),
                    f"seeds must lie in [0, {TRIAL_SEEDS}): the "
                    f"search's trials train with seeds {TRIAL_SEEDS} and up, so that the winner is judged on seeds no "
                    "trial saw",
                )
            ]
        )
        if self.search_id != "new":
            check_id(self.search_id, "search_id")
        rules(
            [
                (
                    self.train.holdout > 0,
                    f"a search selects on a validation split: holdout must be in (0, 0.5), got {self.train.holdout}",
                ),
                (
                    "," not in self.train.dataset,
                    f"a search runs on one data set, got {self.train.dataset!r}; run one search per data set",
                ),
                (self.population >= 2, f"population must be >= 2, got {self.population}"),
                (self.perturb_every >= 1, f"perturb_every must be >= 1 (epochs), got {self.perturb_every}"),
                (self.tune_momentum in (0, 1), f"tune_momentum must be 0 or 1, got {self.tune_momentum}"),
                (
                    self.method != "pbt" or not self.tune_momentum,
                    "PBT here perturbs the LR only; tune_momentum is for tpe and random",
                ),
                (self.cpus_per_run > 0, f"cpus_per_run must be > 0, got {self.cpus_per_run}"),
            ]
        )
        if self.budget_epochs > 0:
            self.check_budget(self.budget_epochs)
        self.trial("search_" + self.method, 0)  # every training setting, checked as train checks it
        return self

    def check_budget(self, allowed):
        pbt = self.method == "pbt"
        need = self.train.epochs * (self.population if pbt else 1)
        what = (
            f"{self.population} members x {self.train.epochs} epochs"
            if pbt
            else f"one trial of {self.train.epochs} epochs"
        )
        rules(
            [
                (
                    allowed >= need,
                    f"a budget of {allowed} epochs cannot pay for {what}; raise the budget or lower epochs"
                    + (" or population" if pbt else ""),
                )
            ]
        )
