"""The decision benchmark's settings (lradvisor/decisions/): `decisions build` measures every action of a grid of LRs
from the decision points of some trajectories; `decisions score` scores any advisor against what was measured."""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from lradvisor.arms import ARMS, unknown_arm
from lradvisor.config.fields import LAUNCHERS, finite, parse_list, rules, setting
from lradvisor.config.train import TrainConfig
from lradvisor.errors import UsageError

BENCH = "decision benchmark"


@dataclass(frozen=True)
class DecisionsConfig:
    """`decisions build`: trajectories (the baseline's schedule, and --from-arms) on every seed; at each of their
    decision points, every grid action trained --horizon epochs in --replicates data orders."""

    NOT_MEASURED: ClassVar = ("arm", "seed", "experiment")  # set per trajectory; the rest every trajectory shares
    decisions_id: str = setting(
        "new",
        "id of the benchmark (letters, digits, _ . -); the same again resumes its build; new: a generated one",
        BENCH,
        unset="new",
    )
    seeds: str = setting("0,1,2", "comma-separated seeds; every trajectory runs with each", BENCH)
    grid: str = setting(
        "0.1,0.3,1,3,10",
        "comma-separated multiples of the scheduler's LR: the actions measured from every state",
        BENCH,
    )
    horizon: str = setting(
        "1",
        "epochs each action trains before it is judged, or end: to the end of the run, the "
        "schedule resuming after the action (costs more, measures the final outcome)",
        BENCH,
    )
    replicates: int = setting(
        2, "data orders each action is trained in (their spread is the benchmark's noise floor)", BENCH
    )
    from_arms: str = setting(
        "none",
        "comma-separated arms whose trajectories are measured too, beside the baseline's "
        "(e.g. random_control, so that the states differ); none: the baseline's only",
        BENCH,
        unset="none",
    )
    parallel: str = setting("1", "trajectories at once, each a process of its own (local launcher)", BENCH)
    launcher: str = setting("local", "local (processes on this machine) or ray (one Ray task per trajectory)", BENCH)
    ray_address: str = setting("auto", "ray: auto, HOST:PORT, or local (a private instance)", BENCH)
    gpus_per_run: str = setting("auto", "ray: GPUs per trajectory; auto: 1 if the cluster has GPUs, else 0", BENCH)
    cpus_per_run: float = setting(1.0, "ray: CPUs per trajectory", BENCH)
    part: str = setting("all", "internal: all, or ARM:SEED, the one trajectory a launched child measures", BENCH)
    experiment: str = setting("lradvisor", "MLflow experiment (ignored inside `mlflow run`, which picks it)", None)
    # digits, as it is best tried (README: Data sets), with the 5 epochs and StepLR cutting every 2 of its example
    train: TrainConfig = TrainConfig(dataset="digits", lr=0.02, batch_size=16, step_size=2, epochs=5, holdout=0.1)

    def seed_list(self):
        return parse_list(self.seeds, "seeds", int)

    def grid_list(self):
        return sorted(parse_list(self.grid, "grid", float))

    def trajectories(self):
        """The arms whose trajectories are measured: the baseline first."""
        extra = [] if self.from_arms == "none" else parse_list(self.from_arms, "from_arms", valid=list(ARMS))
        return list(dict.fromkeys(["baseline", *extra]))

    def trajectory(self, arm, seed):
        return dataclasses.replace(self.train, arm=arm, seed=seed, experiment=self.experiment)

    def check(self):
        from lradvisor.arms import check_id

        finite(self)
        if self.decisions_id != "new":
            check_id(self.decisions_id, "decisions_id")
        self.seed_list()
        grid = self.grid_list()
        rules(
            [
                (
                    all(m > 0 for m in grid) and len(grid) >= 2 and 1.0 in grid,
                    "grid must be 2 or more multiples > 0, "
                    f"among them 1 (the scheduler's own LR: what gains are measured from), got {self.grid!r}",
                ),
                (
                    self.horizon == "end" or (self.horizon.isdigit() and int(self.horizon) >= 1),
                    f"horizon must be an integer >= 1 or end, got {self.horizon!r}",
                ),
                (self.replicates >= 1, f"replicates must be >= 1, got {self.replicates}"),
                (
                    self.train.holdout > 0,
                    "the benchmark judges actions on a validation split: holdout must be in "
                    f"(0, 0.5), got {self.train.holdout}",
                ),
                (
                    self.parallel.isdigit() and int(self.parallel) >= 1,
                    f"parallel must be an integer >= 1, got {self.parallel!r}",
                ),
                (self.launcher in LAUNCHERS, f"unknown launcher {self.launcher!r}; valid: {', '.join(LAUNCHERS)}"),
                (self.train.epochs >= 2, "a run of one epoch has no decision point: epochs must be >= 2"),
            ]
        )
        if self.part != "all":
            arm, _, seed = self.part.partition(":")
            rules(
                [
                    (
                        arm in self.trajectories() and seed.lstrip("-").isdigit(),
                        f"part must be all or ARM:SEED of this build, got {self.part!r}",
                    )
                ]
            )
        for arm in self.trajectories():
            self.trajectory(arm, 0).check()
            if arm != "baseline" and ARMS[arm].get("optimizer", "sgd") != "sgd":
                raise UsageError(f"arm {arm!r} sets its own step size: there is no scheduler's LR to multiply")
        return self


@dataclass(frozen=True)
class ScoreConfig:
    """`decisions score`: an advisor asked at every state of a benchmark; the LR it chose mapped to an outcome."""

    ADVISOR_SETTINGS: ClassVar = (
        "seed",
        "signals",
        "window",
        "prompt",
        "parser",
        "max_factor",
        "advisor",
        "llm_model",
        "temperature",
        "models",
        "thinking_budget",
        "llm_attempts",
        "llm_max_wait",
        "llm_timeout",
        "llm_max_tokens",
    )  # the training settings come from the benchmark
    decisions_id: str = setting(
        "none", "the benchmark to score against (its build's decisions_id)", BENCH, unset="none"
    )
    arm: str = setting(
        "losses",
        "the arm whose decisions are scored: an LLM arm (its prompt), a control, baseline "
        "(always the scheduler's LR), oracle (the best action: regret 0), or a schedule of the ladder "
        "(the LR it would set)",
        BENCH,
    )
    against: str = setting(
        "none",
        "the run id of another scoring of the same benchmark: the two compared paired by "
        "state (Δ regret, CI, p); none: off",
        BENCH,
        unset="none",
    )
    train: TrainConfig = TrainConfig()  # the advisor settings given (ADVISOR_SETTINGS); the rest from the benchmark

    def check(self):
        from lradvisor.arms import check_id

        finite(self.train)
        rules(
            [
                (self.decisions_id != "none", "give the benchmark: --decisions-id ID (of `lradvisor decisions build`)"),
                (self.arm in ARMS, unknown_arm(self.arm)),
            ]
        )
        check_id(self.decisions_id, "decisions_id")
        if self.against != "none":
            check_id(self.against, "run id")
        return self
