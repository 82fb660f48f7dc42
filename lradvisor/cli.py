"""Command line: `lradvisor train|sweep|compare ...` (also `python -m lradvisor ...`).

Every flag here has the same name (dashes for underscores) and default as the MLproject parameter it
backs; a test holds the two together. Everything is validated before any MLflow run is touched.
"""

import argparse
import math
import os
import re
import sys
import warnings

from lradvisor import __version__
from lradvisor.arms import ARMS, GROUPS, UsageError

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

DEVICES = "auto, cpu, cuda or cuda:N"
# String parameters whose default is "not given". MLflow stores an empty default as the literal '', so
# these defaults are words instead (and "" given by hand is read as the word).
UNSET = {"signals": "preset", "every": "preset", "advisor": "preset", "schedule": "preset", "replay_run_id": "none", "sweep_id": "new",
         "experiment": "none", "run_ids": "none", "llm_model": "auto",
         "schedule_file": "none", "budget_from": "none", "storage": "auto", "models": "none"}
ADVICE = ("sync", "async", "async_step")


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


def add_training_args(p, sweep=False, search=False):
    g = p.add_argument_group("training (the published setup)")
    if not sweep and not search:  # a sweep takes lists of these instead; a search sets the arm and seeds
        g.add_argument("--arm", default="baseline", help=f"preset: {', '.join(ARMS)}")
        g.add_argument("--seed", type=int, default=0, help="seed of init, shuffling, augmentation and subset")
    g.add_argument("--epochs", type=int, default=20, help="epochs to train")
    g.add_argument("--batch-size", type=int, default=128, help="training batch size")
    g.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=0.001, help="SGD weight decay")
    if not search:  # a search sets the schedule itself
        g.add_argument("--schedule", default="preset", help="LR schedule: preset (the arm's own; step for most), step, cosine, onecycle, linear, plateau, constant")
        g.add_argument("--schedule-file", default="none", help='JSON file {"lr": [one LR per epoch]} the run follows (schedule `file`; how a PBT winner is trained again); none: off')
    g.add_argument("--step-size", type=int, default=5, help="StepLR: cut the LR every this many epochs")
    g.add_argument("--gamma", type=float, default=0.1, help="StepLR (and plateau): multiply the LR by this at each cut")
    g.add_argument("--subset-ratio", type=float, default=1.0, help="class-stratified fraction of the training set, in (0, 1]")
    g.add_argument("--holdout", type=float, default=0.1 if search else 0.0, help="(a search: > 0, what trials are judged on) " * search + "class-stratified, seed-determined fraction of the training set held out as the validation split every decision reads instead of the test set (per-class accuracy, plateau, credit), in [0, 0.5); 0 = the published protocol")
    if sweep:
        g.add_argument("--dataset", default="cifar10", help="comma list of data sets, crossed with arms x seeds: "
                       "cifar10, cifar100, digits (scikit-learn's bundled 8x8 digits, no download)")
    else:
        g.add_argument("--dataset", default="cifar10", help="cifar10 (published), cifar100, or digits (scikit-learn's "
                       "bundled 8x8 digits, no download; best tried with --lr 0.02 --batch-size 16)")
    g.add_argument("--data-dir", default="data", help="folder holding (or receiving) cifar-10-batches-py / cifar-100-python")
    g.add_argument("--model", default="resnet18", help="resnet18 (CIFAR stem) or resnet18_imagenet_stem")
    g.add_argument("--device", default="auto", help=DEVICES)
    g.add_argument("--compile", type=int, default=0, help="1: torch.compile the model (one-time compile cost)")
    g.add_argument("--precision", default="auto", help="auto (bf16 where the GPU or CPU has native bf16, else fp32), fp32 or bf16 (autocast)")
    g.add_argument("--channels-last", default="auto", help="image memory layout: auto (on for CUDA and CPUs with native bf16), 0 or 1")
    if search:  # no advisor: the search is the controller
        return
    g = p.add_argument_group("LLM advisor (arms other than baseline)")
    g.add_argument("--signals", default="preset", help="override the arm's prompt signals: comma list of losses, lr_history, grad_norms, per_class")
    g.add_argument("--every", default="preset", help="override the arm's cadence: ask after every N-th epoch (0 = never)")
    g.add_argument("--window", type=int, default=5, help="how many recent epochs the prompt shows")
    g.add_argument("--prompt", default="published", help="published (the built-in family), a text file, prompts:/NAME/VERSION or prompts:/NAME@ALIAS (MLflow Prompt Registry) with {{variable}} placeholders")
    g.add_argument("--parser", default="regex", help="regex (published: first number after 'learning rate'/'LR') or json (response schema)")
    g.add_argument("--max-factor", type=float, default=0.0, help="clamp an accepted LR to [s/f, s*f] around the scheduler's s; 0 = off")
    g.add_argument("--advisor", default="preset", help="preset (the arm's own: gemini, or random/textbook for the controls), gemini, openai (any OpenAI-compatible server: OPENAI_BASE_URL, OPENAI_API_KEY), random, textbook, or replay (answers from --replay-run-id, no network)")
    g.add_argument("--replay-run-id", default="none", help="run whose recorded replies --advisor replay uses")
    if sweep:  # crossed with the LLM arms x data sets x seeds; arms that ask no LLM run once
        g.add_argument("--llm-models", default="auto", help="comma list of models each LLM arm asks: names from --models, provider:model (gemini:gemini-3.5-flash, openai:gpt-5-mini), or auto (as --llm-model auto)")
        g.add_argument("--temperatures", default="1.0", help="comma list of sampling temperatures, crossed with --llm-models")
    else:
        g.add_argument("--llm-model", default="auto", help="model to ask: a name from --models, provider:model (gemini:gemini-3.5-flash, openai:gpt-5-mini), or a name the arm's advisor asks; auto: gemini-3.5-flash for Gemini, the one model an OpenAI-compatible server lists")
        g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    g.add_argument("--models", default="none", help="YAML models file: per name its provider, base_url, model, key_env (the NAME of the variable holding its key) and prices in USD per million tokens (scripts/models.example.yaml); none: off")
    g.add_argument("--advice", default="sync", help="sync (published: the next epoch waits for the reply), async (asked in the background, the reply applied from the first epoch after it arrives) or async_step (from the first batch after it arrives)")
    g.add_argument("--thinking-budget", type=int, default=-1, help="thinking tokens (0 = off); -1 = the model's default, not sent")
    g.add_argument("--llm-attempts", type=int, default=6, help="attempts per exchange (429/5xx/timeouts are retried)")
    g.add_argument("--llm-max-wait", type=float, default=60.0, help="cap of the exponential backoff in seconds; a server asking for a longer wait (Retry-After, retryDelay) ends the exchange as failed")
    g.add_argument("--llm-timeout", type=float, default=60.0, help="timeout of one LLM request in seconds; after a timeout the next attempt waits at least this long")
    g.add_argument("--llm-max-tokens", type=int, default=1024, help="cap of the reply's tokens (max_tokens; Gemini: maxOutputTokens = this + the thinking budget); 0 = none sent")
    g.add_argument("--on-advisor-error", default="continue", help="continue (keep the scheduler's LR) or fail (end the run FAILED)")
    g.add_argument("--guard", default="off", help="off (published) or rollback: an epoch at the advisor's LR whose loss explodes is trained again at the scheduler's LR")
    g.add_argument("--guard-factor", type=float, default=3.0, help="rollback when the epoch's training loss exceeds this x the previous epoch's (or is not finite)")
    g.add_argument("--credit-epochs", type=int, default=0, help="k >= 1: every decision that moved the LR is measured against a branch trained k epochs from the same state at the scheduler's LR (credit_acc, credit_loss); 0 = off")


def check_training_args(a):
    """Raise UsageError naming the valid values for the first invalid parameter. Imports nothing heavy: a
    refusal takes a fraction of a second."""
    from lradvisor.arms import MODELS
    floats = [k for k, v in vars(a).items() if isinstance(v, float) and not math.isfinite(v)]
    if floats:  # inf and nan pass every comparison below in one direction or the other
        raise UsageError(f"{floats[0]} must be a finite number, got {getattr(a, floats[0])}")
    from lradvisor.datasets import check_name
    for name in str(a.dataset).split(","):  # a sweep's is a comma list
        check_name(name.strip())
    rules = [
        (a.epochs > 0, f"epochs must be > 0, got {a.epochs}"),
        (a.batch_size > 0, f"batch_size must be > 0, got {a.batch_size}"),
        (a.lr > 0, f"lr must be > 0, got {a.lr}"),
        (0 <= a.momentum < 1, f"momentum must be in [0, 1), got {a.momentum}"),
        (a.weight_decay >= 0, f"weight_decay must be >= 0, got {a.weight_decay}"),
        (a.step_size > 0, f"step_size must be > 0, got {a.step_size}"),
        (a.gamma > 0, f"gamma must be > 0, got {a.gamma}"),
        (0 < a.subset_ratio <= 1, f"subset_ratio must be in (0, 1], got {a.subset_ratio}"),
        (0 <= a.holdout < 0.5, f"holdout must be in [0, 0.5) (0 = no validation split), got {a.holdout}"),
        (a.model in MODELS, f"unknown model {a.model!r}; valid models: {', '.join(MODELS)}"),
        (a.device == "auto" or a.device == "cpu" or a.device.split(":")[0] == "cuda", f"unknown device {a.device!r}; valid: {DEVICES}"),
        (a.compile in (0, 1), f"compile must be 0 or 1, got {a.compile}"),
        (a.precision in ("auto", "fp32", "bf16"), f"unknown precision {a.precision!r}; valid: auto, fp32, bf16"),
        (a.channels_last in ("auto", "0", "1"), f"unknown channels_last {a.channels_last!r}; valid: auto, 0, 1"),
        (a.window > 0, f"window must be > 0, got {a.window}"),
        (a.parser in ("regex", "json"), f"unknown parser {a.parser!r}; valid: regex, json"),
        (a.max_factor == 0 or a.max_factor >= 1, f"max_factor must be 0 (off) or >= 1, got {a.max_factor}"),
        (a.guard in ("off", "rollback"), f"unknown guard {a.guard!r}; valid: off, rollback"),
        (a.guard_factor > 1, f"guard_factor must be > 1, got {a.guard_factor}"),
        (a.credit_epochs >= 0, f"credit_epochs must be >= 0 (0 = off), got {a.credit_epochs}"),
        (a.llm_attempts > 0, f"llm_attempts must be > 0, got {a.llm_attempts}"),
        (a.llm_max_wait >= 0, f"llm_max_wait must be >= 0, got {a.llm_max_wait}"),
        # The SDK takes whole milliseconds, and 0 means no timeout at all.
        (a.llm_timeout >= 1, f"llm_timeout must be >= 1 (seconds), got {a.llm_timeout}"),
        (a.llm_max_tokens >= 0, f"llm_max_tokens must be >= 0 (0 = none sent), got {a.llm_max_tokens}"),
        (a.on_advisor_error in ("continue", "fail"), f"unknown on_advisor_error {a.on_advisor_error!r}; valid: continue, fail"),
        (a.temperature >= 0, f"temperature must be >= 0, got {a.temperature}"),
        (a.advice in ADVICE, f"unknown advice {a.advice!r}; valid: {', '.join(ADVICE)}"),
        # A rollback trains the advised epoch again and a credit branch starts where the reply is applied: both
        # need the reply to apply from an epoch's start, which async_step does not keep to.
        (a.advice != "async_step" or a.guard == "off", "guard rollback retrains an epoch from its start: it needs "
                                                       "advice sync or async, not async_step (a reply lands mid-epoch)"),
        (a.advice != "async_step" or not a.credit_epochs, "credit_epochs branches from an epoch's start: it needs "
                                                          "advice sync or async, not async_step (a reply lands mid-epoch)"),
    ]
    for ok, message in rules:
        if not ok:
            raise UsageError(message)
    from lradvisor.arms import SEARCH_ARMS, resolve
    if a.arm in SEARCH_ARMS and a.command != "search":
        raise UsageError(f"arm {a.arm!r} is trained by `lradvisor search --method {a.arm.removeprefix('search_')}` "
                         "(the schedule it found, on fresh seeds); pick another arm")
    spec = resolve(a.arm, a.signals, a.every, a.advisor, a.schedule)
    from lradvisor import models
    if spec["every"] and spec["advisor"] in ("gemini", "openai"):
        models.pick(a.llm_model, a.models, a.advisor, a.arm)  # reads and checks the models file
    else:
        models.read(a.models)  # a bad models file is refused whatever the arm
    if a.schedule_file != "none" and a.schedule not in ("preset", "file"):
        raise UsageError("schedule_file sets the schedule: leave schedule preset (or file)")
    if a.schedule == "file" and a.schedule_file == "none":
        raise UsageError("schedule file needs a schedule_file: a JSON file {\"lr\": [one LR per epoch]}")
    if a.schedule_file != "none":
        from lradvisor.arms import read_schedule_file
        lrs = read_schedule_file(a.schedule_file)
        if len(lrs) < a.epochs:
            raise UsageError(f"schedule file {a.schedule_file!r} has {len(lrs)} LRs for {a.epochs} epochs; give one per epoch")
        if spec["every"]:
            raise UsageError("a schedule file is followed as it is: it does not take an advisor; use an arm with no "
                             "advisor (baseline) or --every 0")


def build_parser(bench=True):
    p = Parser(prog="lradvisor", description="Can an LLM, asked between epochs, schedule the learning rate better than StepLR?")
    p.add_argument("--version", action="version", version=f"lradvisor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    t = sub.add_parser("train", help="train one arm, tracked in MLflow", description="Train one arm, tracked in MLflow.")
    add_training_args(t)
    t.add_argument("--experiment", default="lradvisor", help="MLflow experiment (ignored inside `mlflow run`, which picks it)")

    s = sub.add_parser("sweep", help="train arms x seeds, nested under one parent run",
                       description="Train every arm x seed as its own run, nested under one parent sweep run.")
    g = s.add_argument_group("sweep")
    g.add_argument("--arms", default="published", help=f"comma-separated arms, or groups of them: {', '.join(f'{k} ({chr(44).join(v)})' for k, v in GROUPS.items())}")
    g.add_argument("--seeds", default="0", help="comma-separated seeds; every arm runs with each")
    g.add_argument("--sweep-id", default="new", help="id tagging the sweep's runs (letters, digits, _ . -); reuse one to resume; new: a generated one")
    g.add_argument("--parallel", default="auto", help="local launcher: runs at once, as separate processes; auto: 1 on CPU, on CUDA as many per GPU as fit (capped)")
    g.add_argument("--launcher", default="local", help="local (processes on this machine) or ray (one Ray task per run)")
    g.add_argument("--ray-address", default="auto", help="ray: auto (RAY_ADDRESS or the cluster `ray start` made here), HOST:PORT, or local (a private instance for this sweep)")
    g.add_argument("--gpus-per-run", default="auto", help="ray: GPUs per run, fractions pack several runs on a GPU (0.25 = four); auto: 1 if the cluster has GPUs, else 0")
    g.add_argument("--cpus-per-run", type=float, default=1.0, help="ray: CPUs per run")
    add_training_args(s, sweep=True)
    s.add_argument("--experiment", default="lradvisor", help="MLflow experiment (ignored inside `mlflow run`, which picks it)")

    c = sub.add_parser("compare", help="tables and overlay plots of finished runs, from the tracking server",
                       description="Compare the finished runs of a sweep (or an experiment, or given runs) from the tracking server.")
    c.add_argument("--sweep-id", default="none", help="compare the runs of this sweep")
    c.add_argument("--experiment", default="none", help="or: every finished training run of this experiment")
    c.add_argument("--run-ids", default="none", help="or: these comma-separated run ids")
    c.add_argument("--baseline", default="baseline", help="arm the others are measured against")
    c.add_argument("--output-dir", default="outputs", help="folder the figures and tables are written to (an earlier compare's files there are replaced)")
    c.add_argument("--margin", type=float, default=0.0, help="points: verdict better/worse only when the whole 95%% CI of Δ lies beyond ±margin")
    c.add_argument("--credit-margin", type=float, default=0.1, help="points: a decision helped / hurt when its credit_acc lies above +this / below -this, else neutral")

    x = sub.add_parser("search", help="Optuna (tpe, random) or Ray Tune PBT at the LLM arms' budget; the winner on fresh seeds",
                       description="A classical controller at the LLM's budget: an Optuna search over the schedule "
                       "(tpe, random) or Population Based Training over the LR (pbt), every trial a run nested under "
                       "search-<id>, selected on a validation holdout; the winner is trained again on --seeds as arm "
                       "search_<method>. The space is in lradvisor/search.py's docstring.")
    g = x.add_argument_group("search")
    g.add_argument("--method", default="tpe", help="tpe (Optuna's TPESampler), random (RandomSampler) or pbt (Ray Tune's PopulationBasedTraining)")
    g.add_argument("--budget-epochs", type=int, default=0, help="epochs the trials (or PBT members) may train in all, pruned ones included")
    g.add_argument("--budget-from", default="none", help="or sweep_id=ID: the epochs the LLM arms of that sweep trained (advisor gemini or openai)")
    g.add_argument("--search-id", default="new", help="id of the search (letters, digits, _ . -); reuse one to resume its Optuna study; new: a generated one")
    g.add_argument("--seeds", default="0", help="comma-separated seeds the winner is trained on (the sweep's; trials use 1000 and up)")
    g.add_argument("--pruner", default="median", help="tpe/random: none, median (MedianPruner) or asha (SuccessiveHalvingPruner), on each epoch's val_acc")
    g.add_argument("--tune-momentum", type=int, default=0, help="tpe/random: 1 searches momentum in [0.8, 0.99] too")
    g.add_argument("--storage", default="auto", help="tpe/random: Optuna storage URL (sqlite:///FILE or an RDB URL); auto: optuna.db beside an sqlite MLflow store, else ./optuna.db")
    g.add_argument("--search-seed", type=int, default=0, help="seed of the sampler (tpe, random) or of PBT's choices")
    g.add_argument("--population", type=int, default=4, help="pbt: members trained at once")
    g.add_argument("--perturb-every", type=int, default=2, help="pbt: epochs between exploit/explore steps")
    g.add_argument("--ray-address", default="auto", help="pbt: auto (RAY_ADDRESS or the cluster `ray start` made here), HOST:PORT, or local (a private instance)")
    g.add_argument("--gpus-per-run", default="auto", help="pbt: GPUs per member, fractions pack several on a GPU; auto: 1 if the cluster has GPUs, else 0")
    g.add_argument("--cpus-per-run", type=float, default=1.0, help="pbt: CPUs per member")
    add_training_args(x, search=True)
    x.add_argument("--experiment", default="lradvisor", help="MLflow experiment (ignored inside `mlflow run`, which picks it)")

    r = sub.add_parser("prompts", help="the MLflow Prompt Registry: register the built-in templates",
                       description="Register the built-in prompt templates in the MLflow Prompt Registry of the current tracking server.")
    r.add_argument("action", choices=["register"], help="register: one prompt per published signal set, NAME-<arm>")
    r.add_argument("--name", default="lradvisor-published", help="prefix of the prompt names")

    b = sub.add_parser("bench", help="time our training loop against a typical DataLoader loop",
                       description="Time our training loop against a typical DataLoader loop (scripts/benchmark.py).")
    if bench:  # its module imports torch: only when it is the command
        from lradvisor.bench import build_parser as bench_parser
        bench_parser(b)
    return p


def parse(argv, bench=True):
    """Parsed and checked arguments, or UsageError: the checks that cost nothing (no torch, no mlflow, no data).
    The tracking server and what reads data come after, in main."""
    args = build_parser(bench=bench).parse_args(argv)
    for key, word in UNSET.items():  # "" and the word mean the same; records always show the word
        if getattr(args, key, None) == "" and (key != "experiment" or args.command == "compare"):
            setattr(args, key, word)
    if args.command == "train":
        check_training_args(args)
    elif args.command == "sweep":
        from lradvisor import sweep
        sweep.check_args(args)
        for arm in sweep.parse_arms(args.arms):
            for llm_model, temperature in sweep.llm_axis(args):
                check_training_args(argparse.Namespace(**vars(args), arm=arm, seed=0, llm_model=llm_model,
                                                       temperature=temperature))
    elif args.command == "search":
        from lradvisor import search
        search.check_args(args)
    return args


def refuse(command, message, argv):
    """One line on stderr. Under `mlflow run` the run it made before we started gets the reason and the arm,
    so the FAILED run it leaves behind says why."""
    print(f"lradvisor {command or ''}: error: {message}".replace("  ", " "), file=sys.stderr)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        from lradvisor import tracking
        arm = next((b for a, b in zip(argv, argv[1:]) if a == "--arm"), None)
        tracking.mark_refused(run_id, message, arm)
    return 2


def main(argv=None):
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"  # one line, no source
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in ("train", "sweep", "search", "compare", "prompts", "bench")), None)
    try:
        args = parse(argv, bench=command == "bench")
        if args.command in ("train", "sweep", "search", "compare", "prompts"):
            from lradvisor import tracking
            tracking.check_server()  # seconds, not minutes, to learn that the tracking server is not there
        if args.command in ("sweep", "search"):
            from lradvisor import sweep
            sweep.check_resources(args)  # the data set and device, and the Ray cluster: before any run exists
        if args.command == "train":
            from lradvisor import train
            train.main(args)
        elif args.command == "sweep":
            return sweep.main(args)
        elif args.command == "search":
            from lradvisor import search
            return search.main(args)
        elif args.command == "compare":
            from lradvisor import compare
            return compare.main(args)
        elif args.command == "prompts":
            from lradvisor import advisor
            for name, version in advisor.register_builtin(args.name):
                print(f"registered prompts:/{name}/{version}")
        elif args.command == "bench":
            from lradvisor import bench
            return bench.main(args)
    except UsageError as e:  # and DataError
        return refuse(command, str(e), argv)
    except KeyboardInterrupt:
        print(f"lradvisor {command}: interrupted; the run was ended KILLED", file=sys.stderr)
        return 130
    except Exception as e:
        from lradvisor.advisor import AdvisorError
        from lradvisor.tracking import ServerLost
        from lradvisor.search import SearchError
        from lradvisor.train import TrainingError
        if isinstance(e, ServerLost):
            print(f"lradvisor {command}: error: {e}", file=sys.stderr)
            return 1
        if not isinstance(e, (TrainingError, AdvisorError, SearchError)):
            raise  # a bug: the traceback helps more than one line (the run is already marked FAILED)
        print(f"lradvisor {command}: error: {e} (the run was ended FAILED)", file=sys.stderr)
        return 1
    return 0
