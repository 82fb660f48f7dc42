"""The arms of the experiment: each one is a few lines of data, and every arm trains through the same loop.

signals: what the prompt shows the LLM besides the current LR (see prompt.py for the exact lines).
every:   ask the LLM after every `every`-th epoch; 0 means never (StepLR alone).
The published study's arms each add one signal to the recent losses; parameters can combine them freely
(`--signals losses,grad_norms,per_class --every 2`).
"""

import os

ARMS = {
    "baseline":   dict(signals=(), every=0),
    "cadence3":   dict(signals=("losses",), every=3),
    "cadence5":   dict(signals=("losses",), every=5),
    "losses":     dict(signals=("losses",), every=1),
    "lr_history": dict(signals=("losses", "lr_history"), every=1),
    "grad_norms": dict(signals=("losses", "grad_norms"), every=1),
    "per_class":  dict(signals=("losses", "per_class"), every=1),
}
SIGNALS = ("losses", "lr_history", "grad_norms", "per_class")


class UsageError(Exception):
    """A parameter is invalid; the message names the valid values."""


def flag(name, value):
    """How the user sets a parameter where they are: `-P name=value` under `mlflow run`, else `--name value`."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return f"-P {name}={value}"
    return f"--{name.replace('_', '-')} {value}"


def resolve(arm, signals="preset", every="preset"):
    """The effective definition of an arm: the preset with the `signals` / `every` overrides applied
    ("preset" or "" keeps the preset's value)."""
    if arm not in ARMS:
        raise UsageError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")
    spec = dict(ARMS[arm])
    if signals not in ("", "preset"):
        names = tuple(s.strip() for s in signals.split(",") if s.strip())
        bad = [s for s in names if s not in SIGNALS]
        if bad or not names:
            raise UsageError(f"invalid signals {signals!r}; give a comma-separated list of {', '.join(SIGNALS)}")
        spec["signals"] = names
    if every not in ("", "preset"):
        try:
            spec["every"] = int(every)
        except ValueError:
            spec["every"] = -1
        if spec["every"] < 0:
            raise UsageError(f"invalid every {every!r}; give an integer >= 0 (0 = never ask the LLM)")
    if spec["every"] > 0 and not spec["signals"]:
        raise UsageError(f"arm {arm!r} asks the LLM but shows it no signals; set --signals to some of {', '.join(SIGNALS)}")
    return spec
