"""The arms of the experiment: each one is a few fields of data, and every arm trains through the same loop.

signals:   what the prompt shows the advisor besides the current LR (llm/prompt.py has the exact lines).
every:     ask the advisor after every `every`-th epoch; 0 means never (the schedule alone).
advisor:   who answers (llm/askers.py): gemini (the published LLM; `openai` for any OpenAI-compatible server), or a
           null control with no LLM: random (the scheduler's LR times 10^u, u uniform in [-1, 1]) or textbook (loss
           not decreasing: LR / 10).
schedule:  the LR schedule under the advisor (engine/schedules.py): step is the published StepLR.
optimizer: sgd (published), or one that sets its own step size (engine/optimizers.py).
The published study's arms each add one signal to the recent losses; parameters can combine them freely
(`--signals losses,grad_norms,per_class --every 2 --schedule cosine`).
"""

import difflib
import json
import os
import re
from dataclasses import dataclass

from lradvisor.errors import UsageError

# An arm a line, aligned: a table to read.
# fmt: off
ARMS = {
    # the published study
    "baseline":   dict(signals=(), every=0),
    "cadence3":   dict(signals=("losses",), every=3),
    "cadence5":   dict(signals=("losses",), every=5),
    "losses":     dict(signals=("losses",), every=1),
    "lr_history": dict(signals=("losses", "lr_history"), every=1),
    "grad_norms": dict(signals=("losses", "grad_norms"), every=1),
    "per_class":  dict(signals=("losses", "per_class"), every=1),
    # the baseline ladder: well-tuned schedules, no advisor
    "cosine":     dict(signals=(), every=0, schedule="cosine"),
    "onecycle":   dict(signals=(), every=0, schedule="onecycle"),
    "linear":     dict(signals=(), every=0, schedule="linear"),
    "plateau":    dict(signals=(), every=0, schedule="plateau"),
    # null controls: the same path as an LLM arm, answered without one
    "random_control":   dict(signals=("losses",), every=1, advisor="random"),
    "textbook_control": dict(signals=("losses",), every=1, advisor="textbook"),
    # beyond the published study: the advisor also sees what its earlier proposals did
    "feedback":   dict(signals=("losses", "feedback"), every=1),
    # classical controllers at the LLM's budget (search.py): a schedule found by Optuna (TPE or random search) or
    # followed by Population Based Training, re-trained on fresh seeds. Only `lradvisor search` trains these.
    "search_tpe":    dict(signals=(), every=0),
    "search_random": dict(signals=(), every=0),
    "search_pbt":    dict(signals=(), every=0),
    # what a user would pick instead of tuning a schedule: optimizers that set their own step size
    # (engine/optimizers.py, with their libraries' recommended settings and schedules); nothing can steer them
    "schedulefree":  dict(signals=(), every=0, optimizer="schedulefree", schedule="constant"),
    "prodigy":       dict(signals=(), every=0, optimizer="prodigy", schedule="cosine"),
    "dadapt_sgd":    dict(signals=(), every=0, optimizer="dadapt_sgd", schedule="step"),
    # the headroom on whole runs: after every epoch, each action of a grid of LRs tried on the validation split
    # (engine/branches.Oracle) and the best applied; greedy, an upper reference for a per-epoch controller
    "oracle":        dict(signals=(), every=0, oracle=True),
}
# fmt: on
SEARCH_ARMS = ("search_tpe", "search_random", "search_pbt")
SIGNALS = ("losses", "lr_history", "grad_norms", "per_class", "feedback")
LLMS = ("gemini", "openai")  # the LLM advisors (llm/gemini.py, llm/compatible.py); the others answer without one
ADVISORS = (*LLMS, "random", "textbook", "replay")
# built in schedules.py; `file` follows --schedule-file (a PBT winner's LR per epoch)
SCHEDULES = ("step", "cosine", "onecycle", "linear", "plateau", "constant", "file")
MODELS = ("resnet18", "resnet18_imagenet_stem")  # built in engine/network.py
# The arms a user names; the search arms are what `lradvisor search` trains, named by it.
OFFERED = tuple(a for a in ARMS if a not in SEARCH_ARMS)
# Names a sweep's `arms` accepts for several arms at once.
GROUPS = {
    "published": ["baseline", "cadence3", "cadence5", "losses", "lr_history", "grad_norms", "per_class"],
    "ladder": ["baseline", "cosine", "onecycle", "linear", "plateau"],
    "controls": ["random_control", "textbook_control"],
    "lrfree": ["schedulefree", "prodigy", "dadapt_sgd"],
}


@dataclass(frozen=True)
class Arm:
    """An arm as a run trains it: its preset with the run's overrides applied (resolve)."""

    signals: tuple
    every: int
    advisor: str = "gemini"
    schedule: str = "step"
    optimizer: str = "sgd"  # engine/optimizers.py
    oracle: bool = False  # decides by branching every action (engine/branches.Oracle), asks nobody

    @property
    def asks_llm(self):
        return bool(self.every) and self.advisor in LLMS


def flag(name, value):
    """How the user sets a parameter where they are: `-P name=value` under `mlflow run`, else `--name value`."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return f"-P {name}={value}"
    return f"--{name.replace('_', '-')} {value}"


def unknown_arm(*names, valid=OFFERED):
    """One line for arm names that are not arms: for each the closest arm (a typo is the usual cause; a prefix counts,
    so `radom` finds random_control), then the valid ones."""

    def likeness(name, arm):
        return max(difflib.SequenceMatcher(None, name, a).ratio() for a in (arm, arm[: len(name) + 1]))

    def said(name):
        best = max(valid, key=lambda arm: likeness(name, arm))
        return f"{name!r}" + (f" (did you mean {best}?)" if likeness(name, best) >= 0.75 else "")

    return (
        f"unknown arm{'s' if len(names) > 1 else ''} {', '.join(map(said, names))}; valid arms: {', '.join(valid)} "
        "(search_tpe, search_random and search_pbt are trained by `lradvisor search`)"
    )


def resolve(arm, signals="preset", every="preset", advisor="preset", schedule="preset"):
    """The effective definition of an arm: the preset with the overrides applied ("preset" or "" keeps the
    preset's value)."""
    if arm not in ARMS:
        raise UsageError(unknown_arm(arm))
    spec = {"advisor": "gemini", "schedule": "step", **ARMS[arm]}  # filled in below, then frozen
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
    if advisor not in ("", "preset"):
        if advisor not in ADVISORS:
            raise UsageError(f"unknown advisor {advisor!r}; valid: preset (the arm's own), {', '.join(ADVISORS)}")
        spec["advisor"] = advisor
    if schedule not in ("", "preset"):
        if schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {schedule!r}; valid: preset (the arm's own), {', '.join(SCHEDULES)}")
        spec["schedule"] = schedule
    if spec["every"] > 0 and not spec["signals"]:
        raise UsageError(
            f"arm {arm!r} asks the LLM but shows it no signals; set --signals to some of {', '.join(SIGNALS)}"
        )
    return Arm(**spec)


ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_id(value, name):
    """Ids go into search filters and artifact names: letters, digits, `_ . -` only."""
    if not ID.match(value):
        raise UsageError(f"invalid {name} {value!r}; use letters, digits, '_', '.' and '-' only")
    return value


def run_name(arm, dataset, seed, tag=""):
    """How a run is named, by train and by a sweep alike: `losses-s0`, `losses-digits-s0` off CIFAR-10, and
    `losses-s0 [fake-a]` with the model (and temperature) an LLM arm asks, when one is named."""
    name = f"{arm}-s{seed}" if dataset == "cifar10" else f"{arm}-{dataset}-s{seed}"
    return f"{name} [{tag}]" if tag else name


def llm_tag(llm_model, temperature):
    """What names an LLM arm's run beyond arm and seed: the model when one is named, the temperature when not 1."""
    return ", ".join(
        ([llm_model] if llm_model != "auto" else []) + ([f"T={temperature:g}"] if temperature != 1 else [])
    )


def read_schedule_file(path):
    """The per-epoch LRs of a schedule file (schedule `file`), or UsageError saying what is wrong with it."""
    try:
        with open(path) as f:
            lrs = json.load(f)["lr"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"cannot read schedule file {path!r} ({type(e).__name__}: {e}); it holds "
            '{"lr": [the LR of epoch 1, of epoch 2, ...]}'
        ) from None
    if not (isinstance(lrs, list) and lrs and all(isinstance(x, (int, float)) and 0 < x < float("inf") for x in lrs)):
        raise UsageError(f"schedule file {path!r}: 'lr' must be a non-empty list of positive numbers")
    return [float(x) for x in lrs]
