"""`lradvisor decisions score`: an advisor asked at every state of a benchmark, scored by looking up what it chose.

For each state the arm's prompt is rendered from the state's variables exactly as a training run at that epoch
renders it, asked through the same askers (retries, parsing, the accept rule, token counts, cost), and the LR training
would apply (a rejected or failed reply: the scheduler's) becomes a multiplier m of the scheduler's LR. Its outcome is
the state's mean validation accuracy over replicates, interpolated linearly in log m between the two neighbouring
grid points (clamped beyond the grid's ends, and flagged off_grid); regret = the best action's outcome − it, gain = it
− the scheduler's (m = 1). Every state is a row of an MLflow GenAI evaluation (`mlflow.genai.evaluate`, code scorers:
regret, gain, accepted), so each exchange is a trace of the evaluation run; our own statistics follow: mean regret and
gain with t CIs over states, and the benchmark's noise floor.

Arms that ask nobody are scored the same way: baseline (always m = 1), oracle (the best action: regret 0 by
construction, its gain is the benchmark's headroom), and the ladder's schedules (the LR the schedule would set at
the next epoch of a run of the benchmark's settings).
"""

import dataclasses
import math
import os
import time

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import tracking
from lradvisor.arms import resolve
from lradvisor.config import TrainConfig, settings
from lradvisor.decisions.build import OUTCOMES, STATES, noise_floor, outcomes_of, said_noise
from lradvisor.engine import schedules
from lradvisor.errors import UsageError
from lradvisor.study import stats

SCORES = "decisions/scores.json"


def benchmark(decisions_id):
    """(run, states, outcome rows) of a finished benchmark, from any experiment of the tracking server."""
    client = MlflowClient()
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        exp_ids,
        f"tags.decisions_id = {tracking.quote(decisions_id)} and tags.role = 'decisions' "
        "and attributes.status = 'FINISHED'",
        max_results=10,
    )
    if not runs:
        raise UsageError(
            f"no finished benchmark {decisions_id!r} on {mlflow.get_tracking_uri()}; build it first: "
            f"lradvisor decisions build --decisions-id {decisions_id}"
        )
    run = runs[0]
    states = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{STATES}")
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{OUTCOMES}")
    return run, states, [dict(zip(table["columns"], row)) for row in table["data"]]


def training_config(run, cfg):
    """The benchmark's training settings (its params) with the scoring's arm and advisor settings."""
    fields = {f.name: f for f in settings(TrainConfig)}
    values = {k: fields[k].type(v) for k, v in run.data.params.items() if k in fields}
    given = {k: getattr(cfg.train, k) for k in cfg.ADVISOR_SETTINGS}
    return dataclasses.replace(TrainConfig(), **{**values, **given, "arm": cfg.arm}).check(by_search=True)


def outcome(means, m):
    """The outcome of multiplier m: interpolated in log m between the grid's neighbours; (value, off_grid, distance to
    the nearest grid point in decades)."""
    grid = sorted(means)
    logs = [math.log10(g) for g in grid]
    x = math.log10(m)
    distance = min(abs(x - g) for g in logs)
    if x <= logs[0] or x >= logs[-1]:
        end = grid[0] if x <= logs[0] else grid[-1]
        return means[end], not math.isclose(x, math.log10(end)), distance
    i = next(i for i in range(1, len(grid)) if logs[i] >= x)
    w = (x - logs[i - 1]) / (logs[i] - logs[i - 1])
    return means[grid[i - 1]] * (1 - w) + means[grid[i]] * w, False, distance


def schedule_lr(cfg, arm, epoch, n_train):
    """The LR a schedule of the ladder sets for epoch `epoch` + 1 of a run of these settings."""
    import torch

    if arm.schedule not in schedules.PER_STEP + ("step", "constant"):
        raise UsageError(
            f"arm {cfg.arm!r}: schedule {arm.schedule} depends on the run's losses and cannot be scored "
            "from a state; score its LLM or control arms, baseline or oracle"
        )
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    steps = n_train // cfg.batch_size + (n_train % cfg.batch_size > 1)  # the loader's batches (it drops a last one)
    sched = schedules.build(arm.schedule, opt, cfg, steps)
    for _ in range(epoch * steps if arm.schedule in schedules.PER_STEP else epoch):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def n_train(run):
    """The training images of the benchmark's runs (a per-step schedule's LR at an epoch depends on the steps an
    epoch has): its finished trajectories' param (every one has the same settings and data; a trajectory killed
    outright before it logged anything has none, and the benchmark holds only finished ones)."""
    client = MlflowClient()
    children = client.search_runs(
        [run.info.experiment_id],
        f"tags.mlflow.parentRunId = {tracking.quote(run.info.run_id)} and tags.role = 'trajectory' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
    )
    if not children or "n_train" not in children[0].data.params:
        raise UsageError(
            f"benchmark {run.data.tags.get('decisions_id')!r} has no trajectory run that says its n_train, so a "
            "per-step schedule's LR cannot be computed; score its LLM or control arms, baseline or oracle"
        )
    return int(children[0].data.params["n_train"])


class Chooser:
    """What an arm chooses at a state: the LR training would apply, with the exchange that chose it."""

    def __init__(self, tcfg, run):
        from lradvisor.llm.advisor import Advisor

        self.cfg, self.arm = tcfg, resolve(tcfg.arm, tcfg.signals, tcfg.every, tcfg.advisor, tcfg.schedule)
        self.n_train = n_train(run) if self.arm.schedule in schedules.PER_STEP else None
        self.advisor = Advisor(tcfg, self.arm) if self.arm.every else None

    def __call__(self, variables, means):
        lr, epoch = variables["scheduler_lr"], variables["epoch"]
        out = {
            "scheduler_lr": lr,
            "reply": None,
            "accepted": None,
            "reason": "",
            "cost_usd": None,
            "latency_s": 0.0,
            "tokens": 0,
        }
        if self.arm.oracle:
            out.update(applied_lr=lr * float(max(means, key=means.get)), reason="the best action")
        elif self.advisor:
            history = variables["history"]
            text, state = self.advisor.question(epoch, history, lr)
            got = self.advisor.ask(epoch, text, state)
            decision = self.advisor.decide(got, lr)
            from lradvisor.llm import zoo

            out.update(
                applied_lr=decision.applied,
                accepted=decision.accepted,
                reason=decision.reason,
                reply=got.get("reply"),
                prompt=text,
                cost_usd=zoo.cost_usd(self.advisor.llm, got),
                latency_s=got.get("latency_s") or 0.0,
                tokens=sum(got.get(k) or 0 for k in ("prompt_tokens", "output_tokens", "thought_tokens")),
            )
        elif self.arm.schedule != "step":
            out.update(applied_lr=schedule_lr(self.cfg, self.arm, epoch, self.n_train), reason=self.arm.schedule)
        else:
            out.update(applied_lr=lr, reason="the scheduler's LR")
        out["multiplier"] = out["applied_lr"] / lr
        return out


def main(cfg):
    import mlflow.genai
    from mlflow.genai.scorers import scorer

    run, states, rows = benchmark(cfg.decisions_id)
    tcfg = training_config(run, cfg)
    choose = Chooser(tcfg, run)
    means = {s: {float(m): v for m, v in outcomes_of(rows, s).items()} for s in states}
    order = sorted(states, key=lambda s: (states[s]["trajectory"], states[s]["seed"], states[s]["epoch"]))
    scored = {}

    def predict_fn(state):
        """The arm asked at this state (a trace of the evaluation run)."""
        t0 = time.perf_counter()
        out = choose(states[state], means[state])
        value, off, distance = outcome(means[state], out["multiplier"])
        best, scheduler = max(means[state].values()), means[state][1.0]
        scored[state] = {
            "state": state,
            "epoch": states[state]["epoch"],
            "seed": states[state]["seed"],
            "trajectory": states[state]["trajectory"],
            **{k: v for k, v in out.items() if k != "prompt"},
            "outcome": value,
            "regret": best - value,
            "gain": value - scheduler,
            "off_grid": off,
            "grid_distance": distance,
            "changed": not math.isclose(out["multiplier"], 1.0),
            "seconds": time.perf_counter() - t0,
        }
        return {
            k: v
            for k, v in scored[state].items()
            if k in ("applied_lr", "multiplier", "accepted", "reply", "reason", "off_grid")
        }

    @scorer
    def regret(inputs, outputs, expectations):
        return max(expectations["outcomes"].values()) - outcome(_floats(expectations), outputs["multiplier"])[0]

    @scorer
    def gain(inputs, outputs, expectations):
        return outcome(_floats(expectations), outputs["multiplier"])[0] - _floats(expectations)[1.0]

    @scorer
    def accepted(outputs):
        return float(bool(outputs["accepted"])) if outputs["accepted"] is not None else 1.0

    data = [
        {"inputs": {"state": s}, "expectations": {"outcomes": {f"{m:g}": v for m, v in means[s].items()}}}
        for s in order
    ]
    os.environ.setdefault("MLFLOW_GENAI_EVAL_MAX_WORKERS", "1")  # in order: the random control draws in sequence
    if not os.environ.get("MLFLOW_RUN_ID"):  # beside the benchmark (under `mlflow run`, in the run it made)
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
    name = f"score-{cfg.arm}-{cfg.decisions_id}"
    with tracking.interrupts_end_runs():
        evaluation = tracking.open_run(None, run_name=name)
        try:
            mlflow.set_tags({"decisions_id": cfg.decisions_id, "arm": cfg.arm, "role": "score"})
            tracking.log_params_once(
                {
                    "arm": cfg.arm,
                    "decisions_id": cfg.decisions_id,
                    "benchmark_run": run.info.run_id,
                    **{k: getattr(tcfg, k) for k in cfg.ADVISOR_SETTINGS},
                }
            )
            mlflow.genai.evaluate(data=data, predict_fn=predict_fn, scorers=[regret, gain, accepted])
            table = [scored[s] for s in order]
            summary = summarize(table, rows, states)
            with tracking.writing():
                tracking.declare_tables([SCORES])
                tracking.write_table(table, SCORES)
                mlflow.log_metrics(summary)
            if cfg.against != "none":
                summary.update(paired(table, cfg.against))
        except BaseException as e:
            tracking.end_failed(
                "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", f"{type(e).__name__}: {e}", e
            )
            raise
        tracking.end_finished()
    report(cfg, evaluation.info.run_id, summary)
    return 0


def _floats(expectations):
    return {float(m): v for m, v in expectations["outcomes"].items()}


def summarize(table, rows, states):
    """Mean regret and gain (points of validation accuracy) with t CIs over states; the benchmark's noise floor."""
    regret, low, high = stats.mean_ci([r["regret"] for r in table])
    gain, glow, ghigh = stats.mean_ci([r["gain"] for r in table])
    out = {
        "regret_mean": regret,
        "gain_mean": gain,
        "states": len(table),
        "off_grid": sum(r["off_grid"] for r in table),
        "changed": sum(r["changed"] for r in table),
        "llm_seconds": sum(r["latency_s"] for r in table),
        "llm_tokens": sum(r["tokens"] for r in table),
    }
    noise = noise_floor(rows, states)
    if noise is not None:  # one replicate: none
        out["noise_floor"] = noise
    if low is not None:
        out.update(regret_ci_low=low, regret_ci_high=high, gain_ci_low=glow, gain_ci_high=ghigh)
    if all(r["cost_usd"] is not None for r in table) and any(r["cost_usd"] for r in table):
        out["llm_cost_usd"] = sum(r["cost_usd"] for r in table)
    return out


def paired(table, other_run):
    """This scoring against another of the same benchmark, paired by state: Δ regret (this − other), CI, p."""
    other = mlflow.artifacts.load_dict(f"runs:/{other_run}/{SCORES}")
    theirs = {r["state"]: r["regret"] for r in (dict(zip(other["columns"], x)) for x in other["data"])}
    both = [r for r in table if r["state"] in theirs]
    if len(both) < 2:
        raise UsageError(f"run {other_run} scored {len(both)} of these states: not the same benchmark")
    test = stats.paired([r["regret"] for r in both], [theirs[r["state"]] for r in both])
    out = {
        "delta_regret": test["delta_vs_baseline"],
        "delta_regret_ci_low": test["delta_ci_low"],
        "delta_regret_ci_high": test["delta_ci_high"],
        "delta_regret_p": test["p_value"],
        "paired_states": len(both),
    }
    with tracking.writing():
        mlflow.log_metrics({k: v for k, v in out.items() if v is not None and math.isfinite(v)}, run_id=None)
        mlflow.set_tag("against", other_run)
    return out


def report(cfg, run_id, s):
    ci = f" [{s['regret_ci_low']:.2f}, {s['regret_ci_high']:.2f}]" if "regret_ci_low" in s else ""
    gci = f" [{s['gain_ci_low']:+.2f}, {s['gain_ci_high']:+.2f}]" if "gain_ci_low" in s else ""
    print(
        f"score {cfg.arm} on decisions {cfg.decisions_id}: regret {s['regret_mean']:.2f}{ci} points, gain over the "
        f"scheduler {s['gain_mean']:+.2f}{gci} over {s['states']} states "
        f"(noise floor {said_noise(s.get('noise_floor'))}); "
        f"{s['changed']} changed the LR, {s['off_grid']} off the grid; run {run_id}"
    )
    if "delta_regret" in s:
        print(
            f"  against {cfg.against}: Δ regret {s['delta_regret']:+.2f} [{s['delta_regret_ci_low']:+.2f}, "
            f"{s['delta_regret_ci_high']:+.2f}], p {s['delta_regret_p']}, over {s['paired_states']} states"
        )
