"""The settings of the commands that train no run of their own: compare, prompts, bench."""

from dataclasses import dataclass

from lradvisor.config.fields import DEVICES, setting


@dataclass(frozen=True)
class CompareConfig:
    """What to compare, against which baseline, and where the tables and figures go."""

    sweep_id: str = setting("none", "compare the runs of this sweep", None, unset="none")
    experiment: str = setting("none", "or: every finished training run of this experiment", None, unset="none")
    run_ids: str = setting("none", "or: these comma-separated run ids", None, unset="none")
    baseline: str = setting("baseline", "arm the others are measured against", None)
    output_dir: str = setting(
        "outputs", "folder the figures and tables are written to (an earlier compare's files there are replaced)", None
    )
    margin: float = setting(
        0.0, "points: verdict better/worse only when the whole 95%% CI of Δ lies beyond ±margin", None
    )
    alpha: float = setting(
        0.05,
        "error rate of each row's anytime-valid confidence sequence (cs_low, cs_high; "
        "not corrected for the number of rows)",
        None,
    )
    credit_margin: float = setting(
        0.1, "points: a decision helped / hurt when its credit_acc lies above +this / below -this, else neutral", None
    )

    def given(self, key):
        """A selector's value, or "" where it was not given (none)."""
        value = getattr(self, key)
        return "" if value == "none" else value


@dataclass(frozen=True)
class PromptsConfig:
    action: str = setting(
        "register",
        "register: one prompt per published signal set, NAME-<arm>",
        None,
        positional=True,
        choices=("register",),
    )
    name: str = setting("lradvisor-published", "prefix of the prompt names", None)


@dataclass(frozen=True)
class BenchConfig:
    """`lradvisor bench` (scripts/benchmark.py): our loop and a typical DataLoader loop, timed on the same data."""

    loops: str = setting("ours,reference", "which loops to time: ours, reference or both", None)
    epochs: int = setting(3, "epochs per loop (the first is reported apart as warm-up)", None)
    batch_size: int = setting(128, "training batch size", None)
    train_size: int = setting(50000, "training images (CIFAR-10 has 50000)", None)
    test_size: int = setting(10000, "test images (CIFAR-10 has 10000)", None)
    data_dir: str = setting("data", "real CIFAR-10 is used when this holds it", None)
    device: str = setting("auto", DEVICES, None)
    compile: int = setting(0, "1: torch.compile our model", None)
    precision: str = setting("auto", "our loop: auto (bf16 where native), fp32 or bf16", None)
    channels_last: str = setting("auto", "our loop: auto, 0 or 1", None)
    workers: int = setting(4, "DataLoader workers of the reference loop", None)
    processes: int = setting(
        1, "N > 1: run N copies of our loop at once (as a sweep with parallel=N does) and report their sum", None
    )
