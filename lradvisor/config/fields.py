"""How a setting is declared (`setting`: default, help line, argparse group, the word for "not given"), the constants
the settings name, and the helpers every config uses: its settings, a child's flags, comma lists, one-line rules."""

import dataclasses
import math
from dataclasses import field

from lradvisor.errors import UsageError

DEVICES = "auto, cpu, cuda or cuda:N"
ADVICE = ("sync", "async", "async_step")
LAUNCHERS = ("local", "ray")  # study/launch.py's local, study/ray_launch.py's ray
METHODS, PRUNERS = ("tpe", "random", "pbt"), ("none", "median", "asha")
TRIAL_SEEDS = 1000  # a search's trial n trains with seed 1000 + n; the winner's final seeds lie below
TRAINING, ADVISOR = "training (the published setup)", "LLM advisor (arms other than baseline)"


def setting(default, help, group=TRAINING, unset=None, **meta):
    """A field: its default and help line, the argparse group it is shown in, and `unset`, the word a string
    setting takes for "not given" (MLflow stores an empty default as the literal '', so "" given is read as it)."""
    return field(default=default, metadata={"help": help, "group": group, "unset": unset, **meta})


def settings(cls):
    """The fields of a config that are settings (a nested config is not one)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def finite(cfg):
    """inf and nan pass every comparison in one direction or the other: refuse them first."""
    for f in settings(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{f.name} must be a finite number, got {value}")


def to_flags(cfg, skip=()):
    """The command-line flags that give a process these settings, in field order: `--batch-size 128 ...`."""
    return [
        x
        for f in settings(cfg)
        if f.name not in skip
        for x in ("--" + f.name.replace("_", "-"), str(getattr(cfg, f.name)))
    ]


def parse_list(text, name, convert=str, valid=None):
    """A comma-separated setting as a list (repeats dropped, order kept), or UsageError naming what is wrong."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    try:
        items = [convert(x) for x in items]
    except ValueError:
        kind = "numbers" if convert is float else "integers"
        raise UsageError(f"invalid {name} {text!r}; give a comma-separated list of {kind}") from None
    bad = [x for x in items if valid is not None and x not in valid]
    if bad:
        raise UsageError(f"invalid {name}: {', '.join(map(str, bad))}; valid: {', '.join(valid)}")
    if not items:
        raise UsageError(f"invalid {name} {text!r}; give a comma-separated list")
    return list(dict.fromkeys(items))


def rules(checks):
    """Raise UsageError with the message of the first check that fails: [(ok, message), ...]."""
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
