"""Command line: `lradvisor train|sweep|search|compare|prompts|bench ...` (also `python -m lradvisor ...`).

The parsers are made from the settings in config.py: every flag has the name (dashes for underscores), default and
help of its field, and MLproject's parameters match them (tests/test_train.py holds the two together). Everything
is checked before any MLflow run is touched; an error the user can act on is one line (errors.py).
"""

import argparse
import dataclasses
import os
import re
import sys
import warnings

from lradvisor import __version__
from lradvisor.config import (
    TRAINING,
    BenchConfig,
    CompareConfig,
    PromptsConfig,
    SearchConfig,
    SweepConfig,
    TrainConfig,
    settings,
)
from lradvisor.config.decisions import DecisionsConfig, ScoreConfig
from lradvisor.errors import LradvisorError, UsageError

# Quiet MLflow's console chatter; users can still override these.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download (with tqdm installed)
# MLflow retries a dead server for ~4 minutes by default (16 when it hangs); these bound that to ~2 minutes
# (4 retries 2-16 s apart, 20 s per request), enough to ride out a server restart.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

COMMANDS = ("train", "sweep", "search", "decisions", "compare", "prompts", "bench")


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # No prefix matching: `mlflow run -P step=1` appends `--step 1`, which would silently become --step-size.
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, not usage + message; main() prints it (and marks an mlflow-run run)
        unknown = re.findall(r"(?:^|\s)--([\w-]+)", message) if message.startswith("unrecognized arguments") else []
        if unknown and os.environ.get("MLFLOW_RUN_ID"):
            keys = ", ".join(k.replace("-", "_") for k in unknown)
            message = f"unknown parameter {keys} (given as -P); see the entry point's parameters in MLproject"
        raise UsageError(f"{message}; see {self.prog} --help")


def add(parser, fields, defaults=None, prefix=None):
    """A flag per field (a positional where the field says so), in its field's argparse group; its default from
    `defaults` (a config) where that has the field, else the field's own; `prefix`: words said before a help line."""
    groups = {}
    for f in fields:
        meta, where = f.metadata, parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            where = groups[meta["group"]]
        help = (prefix or {}).get(f.name, "") + meta["help"]
        if meta.get("positional"):
            where.add_argument(f.name, choices=meta["choices"], help=help)
        elif "const" in meta:  # `--until-decided` alone means 1; `--until-decided 0` (mlflow run's form) works too
            where.add_argument(
                "--" + f.name.replace("_", "-"),
                nargs="?",
                const=meta["const"],
                type=f.type,
                default=getattr(defaults, f.name, f.default),
                help=help,
            )
        else:
            where.add_argument(
                "--" + f.name.replace("_", "-"),
                default=getattr(defaults, f.name, f.default),
                help=help,
                **({"type": f.type} if f.type in (int, float) else {}),
            )


HELP = {  # command: (its line in `lradvisor --help`, its own --help's description)
    "train": ("train one arm, tracked in MLflow", "Train one arm, tracked in MLflow."),
    "sweep": (
        "train arms x seeds, nested under one parent run",
        "Train every arm x seed as its own run, nested under one parent sweep run.",
    ),
    "search": (
        "Optuna (tpe, random) or Ray Tune PBT at the LLM arms' budget; the winner on fresh seeds",
        "A classical controller at the LLM's budget: an Optuna search over the schedule (tpe, random) or "
        "Population Based Training over the LR (pbt), every trial a run nested under search-<id>, selected on a "
        "validation holdout; the winner is trained again on --seeds as arm search_<method>. The space is in "
        "lradvisor/search/__init__.py's docstring.",
    ),
    "decisions": (
        "the decision benchmark: every candidate LR measured from the same states (build); any advisor "
        "scored by regret (score)",
        "The decision benchmark (lradvisor/decisions/__init__.py): build measures every action of a grid of "
        "LRs from the decision points of some trajectories; score asks an arm at every state and looks up "
        "what it chose.",
    ),
    "build": (
        "measure a benchmark (the same command again resumes it)",
        "Measure every grid action from every decision point of the trajectories.",
    ),
    "score": (
        "score an arm against a benchmark, in minutes",
        "Ask the arm at every state of a benchmark; score the LR it chose by regret.",
    ),
    "compare": (
        "tables and overlay plots of finished runs, from the tracking server",
        "Compare the finished runs of a sweep (or an experiment, or given runs) from the tracking server.",
    ),
    "prompts": (
        "the MLflow Prompt Registry: register the built-in templates",
        "Register the built-in prompt templates in the MLflow Prompt Registry of the current tracking server.",
    ),
    "bench": (
        "time our training loop against a typical DataLoader loop",
        "Time our training loop against a typical DataLoader loop (scripts/benchmark.py).",
    ),
}


def build_parser():
    p = Parser(
        prog="lradvisor", description="Can an LLM, asked between epochs, schedule the learning rate better than StepLR?"
    )
    p.add_argument("--version", action="version", version=f"lradvisor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def new(where, name):
        return where.add_parser(name, help=HELP[name][0], description=HELP[name][1])

    add(new(sub, "train"), settings(TrainConfig))
    add_sweep(new(sub, "sweep"))
    add_search(new(sub, "search"))
    actions = new(sub, "decisions").add_subparsers(dest="action", required=True, parser_class=Parser)
    add_build(new(actions, "build"))
    score = new(actions, "score")
    add(score, settings(ScoreConfig))
    add(score, [f for f in settings(TrainConfig) if f.name in ScoreConfig.ADVISOR_SETTINGS])
    for name, cls in (("compare", CompareConfig), ("prompts", PromptsConfig), ("bench", BenchConfig)):
        add(new(sub, name), settings(cls))
    return p


def add_sweep(parser):
    """The sweep's own settings, then train's, its lists in the place of a child's dataset, llm_model, temperature."""
    own = {f.metadata.get("replaces", f.name): f for f in settings(SweepConfig)}
    add(parser, [f for f in settings(SweepConfig) if "replaces" not in f.metadata and f.name != "experiment"])
    train = [own.get(f.name, f) for f in settings(TrainConfig)]
    add(
        parser,
        [f for f in train if f.name not in SweepConfig.PER_CHILD or "replaces" in f.metadata] + [own["experiment"]],
    )


def add_search(parser):
    """The search's own settings, then train's training settings it does not set itself (holdout: 0.1)."""
    own = {f.name: f for f in settings(SearchConfig)}
    add(parser, [f for name, f in own.items() if name != "experiment"])
    train = [
        f for f in settings(TrainConfig) if f.metadata["group"] == TRAINING and f.name not in SearchConfig.NOT_SEARCHED
    ]
    add(parser, train + [own["experiment"]], SearchConfig().train, SearchConfig.TRAIN_HELP)


def add_build(parser):
    """The benchmark's own settings, then every setting of train but the arm and seed (its defaults: digits)."""
    own = {f.name: f for f in settings(DecisionsConfig)}
    add(parser, [f for name, f in own.items() if name != "experiment"])
    add(
        parser,
        [f for f in settings(TrainConfig) if f.name not in DecisionsConfig.NOT_MEASURED] + [own["experiment"]],
        DecisionsConfig().train,
    )


def config_of(cls, ns, skip=(), **extra):
    """The settings of `cls` that the parsed arguments hold: "" given for a string setting with a word for "not
    given" is read as that word (records always show the word)."""
    values = {}
    for f in settings(cls):
        if f.name in skip or not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        values[f.name] = f.metadata["unset"] if value == "" and f.metadata["unset"] else value
    return cls(**values, **extra)


def parse(argv):
    """(command, its checked config), or UsageError: the checks that cost nothing (no torch, no mlflow, no data).
    The tracking server and what reads data come after, in main."""
    ns = build_parser().parse_args(argv)
    if ns.command == "train":
        return "train", config_of(TrainConfig, ns).check()
    if ns.command == "sweep":
        return "sweep", config_of(SweepConfig, ns, train=config_of(TrainConfig, ns, skip=SweepConfig.PER_CHILD)).check()
    if ns.command == "search":
        return "search", config_of(
            SearchConfig, ns, train=config_of(TrainConfig, ns, skip=SearchConfig.NOT_SEARCHED)
        ).check()
    if ns.command == "decisions" and ns.action == "build":
        return "decisions", config_of(
            DecisionsConfig, ns, train=config_of(TrainConfig, ns, skip=DecisionsConfig.NOT_MEASURED)
        ).check()
    if ns.command == "decisions":
        return "decisions", config_of(ScoreConfig, ns, train=config_of(TrainConfig, ns)).check()
    return ns.command, config_of(
        {"compare": CompareConfig, "prompts": PromptsConfig, "bench": BenchConfig}[ns.command], ns
    )


def check_resources(cfg):
    """What a sweep or a search needs to exist, before any run does: the device, the data (downloaded once here, not
    in N children at once; its md5 said once), and the Ray cluster with a node that fits a run. Returns the config
    with the GPUs per run Ray settled on."""
    from lradvisor.data.files import holdout_split, load, stratified_subset
    from lradvisor.data.registry import DATASETS
    from lradvisor.engine.device import pick_device

    t = cfg.train
    pick_device(t.device)
    sweep = isinstance(cfg, SweepConfig)
    if isinstance(cfg, DecisionsConfig) and cfg.part != "all":  # a launched child: its parent checked all this
        return cfg
    for name in cfg.dataset_list() if sweep else [t.dataset]:
        labels = load(t.data_dir, name)[1]
        for seed in cfg.seed_list():  # a holdout too big for the data: said once, not per run
            holdout_split(
                labels, stratified_subset(labels, t.subset_ratio, seed), t.holdout, seed, DATASETS[name]["classes"]
            )
    needs_ray = cfg.method == "pbt" if isinstance(cfg, SearchConfig) else cfg.launcher == "ray"
    if needs_ray:
        import importlib.util

        from lradvisor.study import ray_launch

        if importlib.util.find_spec("ray") is None:
            what = "the ray launcher needs Ray" if sweep else "PBT needs Ray Tune"
            raise UsageError(f'{what}: pip install "lradvisor[ray]"')
        gpus = ray_launch.ray_connect(cfg.ray_address, cfg.cpus_per_run, cfg.gpus_per_run)
        cfg = dataclasses.replace(cfg, gpus_per_run=str(gpus))
    return cfg


def refuse(command, error, argv):
    """One line on stderr. Under `mlflow run` the run it made before we started gets the reason and the arm,
    so the FAILED run it leaves behind says why."""
    print(error.line(command), file=sys.stderr)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        from lradvisor import tracking

        arm = next((b for a, b in zip(argv, argv[1:]) if a == "--arm"), None)
        tracking.mark_refused(run_id, str(error), arm)
    return error.code


def main(argv=None):
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"  # one line, no source
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    try:
        command, cfg = parse(argv)
        if command != "bench":
            from lradvisor import tracking

            tracking.check_server()  # seconds, not minutes, to learn that the tracking server is not there
            tracking.ready_store()  # a fresh local store made once, however many commands start together
        if command in ("sweep", "search") or isinstance(cfg, DecisionsConfig):
            cfg = check_resources(cfg)
        return run(command, cfg) or 0
    except UsageError as e:  # and DataError: refused before any run exists (or the one `mlflow run` made)
        return refuse(command, e, argv)
    except LradvisorError as e:  # a run that started and could not go on; it was ended as its line says
        print(e.line(command), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"lradvisor {command}: interrupted; the run was ended KILLED", file=sys.stderr)
        return 130
    except OSError as e:  # the disk or a file, not a bug of ours: one line (the run's error.txt has the traceback)
        print(
            f"lradvisor {command}: error: {type(e).__name__}: {e} (any run started was ended FAILED)", file=sys.stderr
        )
        return 1


def console():
    """`lradvisor` and `python -m lradvisor`: main(), then leave. After a Ray connect that never answered
    (study/ray_launch.py: HUNG), a normal exit could abort in Ray's thread after our one line: leave at once instead,
    with main's code (nothing is left to write: the command was refused before any run)."""
    code = main()
    ray_launch = sys.modules.get("lradvisor.study.ray_launch")
    if ray_launch is not None and ray_launch.HUNG:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def run(command, cfg):
    if command == "train":
        from lradvisor.engine import run

        run.main(cfg)
    elif command == "sweep":
        from lradvisor.study import sweep

        return sweep.main(cfg)
    elif command == "search":
        from lradvisor import search

        return search.main(cfg)
    elif command == "decisions":
        from lradvisor import decisions

        return decisions.main(cfg)
    elif command == "compare":
        from lradvisor.study import compare

        return compare.main(cfg)
    elif command == "prompts":
        from lradvisor.llm.advisor import register_builtin

        for name, version in register_builtin(cfg.name):
            print(f"registered prompts:/{name}/{version}")
    elif command == "bench":
        from lradvisor.engine import bench

        return bench.main(cfg)
