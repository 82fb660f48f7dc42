"""Every setting, once: frozen dataclasses whose fields carry their default, type and help line.

    TrainConfig    one run: `lradvisor train`, MLproject's main; its fields are the run's MLflow params
    SweepConfig    arms x data sets x seeds, every child a TrainConfig: `lradvisor sweep`
    SearchConfig   a classical controller at the LLM's budget, every trial a TrainConfig: `lradvisor search`
    CompareConfig  tables and figures of finished runs: `lradvisor compare`
    BenchConfig    our training loop against a DataLoader loop: `lradvisor bench`

cli.py makes the argparse parsers from these fields; tests hold MLproject's parameters and the README's parameter
table to them. A derived config is `dataclasses.replace(cfg, ...)` (a sweep's child, a search's trial), and a child
process gets its settings as `to_flags(cfg)`. `check()` is every rule that costs nothing (no torch, no mlflow, no
data): the first bad value is one line naming the valid ones. This package imports nothing heavy: fields.py (how
a setting is declared, and the helpers every config uses),
train.py, study.py (sweep and search: their children are TrainConfigs), tools.py (compare, prompts, bench).
"""

from lradvisor.config.fields import (
    ADVICE,
    ADVISOR,
    DEVICES,
    LAUNCHERS,
    METHODS,
    PRUNERS,
    TRAINING,
    TRIAL_SEEDS,
    parse_list,
    settings,
    to_flags,
)
from lradvisor.config.study import SearchConfig, SweepConfig
from lradvisor.config.tools import BenchConfig, CompareConfig, PromptsConfig
from lradvisor.config.train import TrainConfig

__all__ = [
    "TrainConfig",
    "SweepConfig",
    "SearchConfig",
    "CompareConfig",
    "PromptsConfig",
    "BenchConfig",
    "settings",
    "to_flags",
    "parse_list",
    "DEVICES",
    "ADVICE",
    "ADVISOR",
    "LAUNCHERS",
    "METHODS",
    "PRUNERS",
    "TRAINING",
    "TRIAL_SEEDS",
]
