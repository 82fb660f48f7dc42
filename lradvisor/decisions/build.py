"""`lradvisor decisions build`: trajectories measured at every decision point (module docstring of the package).

Each trajectory (an arm on a seed) is an ordinary training run nested under the benchmark's run `decisions-<id>`
(role trajectory), trained through the engine with one more handler, engine/branches.Measure, which trains every
grid action from each decision point and puts the state back. What a trajectory measured is in its own run
(decisions/states.json, decisions/outcomes.json) as each state is done, so a killed build goes on where it stopped: a
finished trajectory is not trained again, and an unfinished one is trained again measuring only the states it had not.
When all are done the benchmark's run gathers them: the outcome table, the states, and an MLflow GenAI evaluation
dataset of both (inputs: a state's prompt variables; expectations: the outcome of every action).
"""

import dataclasses
import json
import os
import statistics
import sys
import time
import uuid

import mlflow
from mlflow.tracking import MlflowClient

from lradvisor import tracking
from lradvisor.arms import resolve
from lradvisor.config import to_flags
from lradvisor.errors import UsageError
from lradvisor.study import launch

OUTCOMES, STATES = "decisions/outcomes.json", "decisions/states.json"


def runs_of(client, exp_id, decisions_id, role):
    return client.search_runs(
        [exp_id],
        f"tags.decisions_id = {tracking.quote(decisions_id)} and tags.role = {tracking.quote(role)}",
        max_results=5000,
        order_by=["attributes.start_time ASC"],
    )


def measured(client, run):
    """(states, outcome rows) a trajectory's run recorded; empty when it recorded none yet."""
    try:
        states = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{STATES}")
        table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{OUTCOMES}")
    except Exception:  # nothing measured before it stopped
        return {}, []
    return states, [dict(zip(table["columns"], row)) for row in table["data"]]


def settings_of(cfg):
    """What makes the benchmark this one: a resume must match."""
    return {
        "grid": ",".join(f"{m:g}" for m in cfg.grid_list()),
        "horizon": cfg.horizon,
        "replicates": cfg.replicates,
        "from_arms": cfg.from_arms,
        **{k: v for k, v in cfg.train.params().items() if k not in ("arm", "seed")},
    }


def measure(cfg, arm, seed, run_id, client, exp_id, decisions_id):
    """Train one trajectory into `run_id`, measuring the states an earlier attempt of it did not."""
    from lradvisor.engine import run
    from lradvisor.engine.branches import Measure

    states, rows = {}, []
    for earlier in runs_of(client, exp_id, decisions_id, "trajectory"):
        tags = earlier.data.tags
        if tags.get("arm") == arm and tags.get("seed") == str(seed) and earlier.info.run_id != run_id:
            got, got_rows = measured(client, earlier)
            states.update(got)
            rows += [r for r in got_rows if r["state"] in got and r["state"] not in {x["state"] for x in rows}]
    if states:
        print(f"decisions {decisions_id}: {arm} seed {seed}: {len(states)} state(s) measured before, not again")

    def record(state, variables, new_rows, seconds):
        states[state] = variables
        rows.extend(new_rows)
        with tracking.writing():
            mlflow.log_dict(states, STATES)
            tracking.write_table(rows, OUTCOMES)
            mlflow.log_metric("measure_seconds", seconds, step=variables["epoch"])
        print(f"  measured {state}: {len(new_rows)} branches in {seconds:.1f} s", flush=True)

    t = cfg.train
    mine, base = (resolve(a, t.signals, t.every, t.advisor, t.schedule) for a in (arm, "baseline"))
    like = arm != "baseline" and (mine.schedule, mine.optimizer, mine.oracle) == (base.schedule, base.optimizer, False)
    handler = Measure(arm, cfg.grid_list(), cfg.horizon, cfg.replicates, set(states), record, like)
    run.main(cfg.trajectory(arm, seed), run_id=run_id, measure=handler)


class Build(launch.Sweep):
    """The launcher's view of a build (study/launch.py): each child measures one trajectory, `decisions build
    --part ARM:SEED`, attached to a run made here."""

    def create_child(self, job):
        with tracking.writing():
            return self.client.create_run(
                self.experiment_id,
                run_name=job.name,
                tags={
                    "mlflow.parentRunId": self.parent_id,
                    "decisions_id": self.sweep_id,
                    "role": "trajectory",
                    "arm": job.arm,
                    "seed": str(job.seed),
                },
            ).info.run_id

    def command(self, job, flags=None):
        """The child's command; its data and models files as absolute paths (a Ray node has another folder)."""
        t = self.cfg.train
        part = dataclasses.replace(
            self.cfg,
            part=f"{job.arm}:{job.seed}",
            decisions_id=self.sweep_id,
            train=dataclasses.replace(
                t,
                data_dir=os.path.abspath(t.data_dir),
                models=(os.path.abspath(t.models) if t.models != "none" else "none"),
            ),
        )
        return [
            sys.executable,
            "-m",
            "lradvisor",
            "decisions",
            "build",
            *to_flags(part, skip=("experiment",)),
            *to_flags(part.train, skip=("arm", "seed", "experiment")),
        ]


def open_parent(client, cfg, decisions_id):
    """The benchmark's run: `mlflow run`'s, this benchmark's from an earlier start (a resume, whose settings must be
    the same), or a new one. Returns (experiment id, run id)."""
    env = os.environ.get("MLFLOW_RUN_ID")
    exp_id = client.get_run(env).info.experiment_id if env else mlflow.set_experiment(cfg.experiment).experiment_id
    earlier = [r for r in runs_of(client, exp_id, decisions_id, "decisions") if r.info.run_id != env]
    wanted = {k: str(v) for k, v in settings_of(cfg).items()}
    for r in earlier:
        differ = [k for k, v in wanted.items() if k in r.data.params and r.data.params[k] != v]
        if differ:
            raise UsageError(
                f"decisions {decisions_id!r} was built with {differ[0]}={r.data.params[differ[0]]} (now "
                f"{wanted[differ[0]]}); resume it with the same settings, or give a new --decisions-id"
            )
    if env:
        run_id = env
    elif earlier:
        run_id = earlier[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        print(f"decisions {decisions_id}: resuming (run {run_id})")
        end_open(client, runs_of(client, exp_id, decisions_id, "trajectory"), None)
    else:
        run_id = client.create_run(exp_id, run_name=f"decisions-{decisions_id}").info.run_id
    for k, v in {
        "decisions_id": decisions_id,
        "role": "decisions",
        "mlflow.runName": f"decisions-{decisions_id}",
    }.items():
        client.set_tag(run_id, k, v)
    have = client.get_run(run_id).data.params
    for k, v in wanted.items():
        if k not in have:
            client.log_param(run_id, k, v)
    client.set_tag(run_id, "seeds", cfg.seeds)  # the seeds may grow on a resume
    return exp_id, run_id


def end_open(client, runs, error):
    """End the trajectory runs still RUNNING: KILLED after an interrupt or when an earlier build stopped without ending
    them (killed outright; `error` None), FAILED after an error. What they measured stays and a resume reuses it."""
    killed = error is None or isinstance(error, (KeyboardInterrupt, SystemExit))
    why = "interrupted" if killed and error is not None else f"{type(error).__name__}: {error}" if error else None
    for r in (r for r in runs if r.info.status == "RUNNING"):
        with tracking.signals_held():
            client.set_tag(r.info.run_id, "failure_reason", why or "its build stopped before ending it; resumed")
            client.set_terminated(r.info.run_id, "KILLED" if killed else "FAILED")


def main(cfg):
    client = MlflowClient()
    decisions_id = uuid.uuid4().hex[:8] if cfg.decisions_id == "new" else cfg.decisions_id
    if cfg.part != "all":  # a launched child: one trajectory, into the run made for it
        arm, _, seed = cfg.part.partition(":")
        run = client.get_run(os.environ["MLFLOW_RUN_ID"])
        measure(cfg, arm, int(seed), run.info.run_id, client, run.info.experiment_id, decisions_id)
        return 0
    exp_id, parent = open_parent(client, cfg, decisions_id)
    t0 = time.perf_counter()
    with tracking.interrupts_end_runs():
        try:
            jobs = todo(cfg, client, exp_id, decisions_id)
            print(
                f"decisions {decisions_id}: {len(jobs)} trajectories to measure ({', '.join(j.name for j in jobs)}), "
                f"grid x{cfg.grid}, horizon {cfg.horizon}, {cfg.replicates} replicate(s); run {parent}",
                flush=True,
            )
            if int(cfg.parallel) == 1 and cfg.launcher == "local":
                for job in jobs:  # in this process: no start-up per trajectory
                    run_id = Build(cfg, decisions_id, exp_id, parent, [], 1).create_child(job)
                    try:
                        measure(cfg, job.arm, job.seed, run_id, client, exp_id, decisions_id)
                    except BaseException as e:  # one that failed before its run was opened is ended here
                        end_open(client, [client.get_run(run_id)], e)
                        raise
            else:
                build = Build(cfg, decisions_id, exp_id, parent, [], int(cfg.parallel))
                results = launch.launcher(cfg.launcher)(jobs, build)
                failed = [j.name for j, r in results.items() if not r[0]]
                if failed:
                    raise UsageError(f"trajectories failed: {', '.join(failed)}; the same command again resumes")
            gather(cfg, client, exp_id, parent, decisions_id, time.perf_counter() - t0)
        except BaseException as e:
            killed = isinstance(e, (KeyboardInterrupt, SystemExit))
            with tracking.signals_held():
                client.set_tag(parent, "failure_reason", str(e) or "interrupted")
                client.set_terminated(parent, "KILLED" if killed else "FAILED")
            raise
    client.set_terminated(parent, "FINISHED")
    print(f"  view: {tracking.ui_link(exp_id, parent)}")
    return 0


def todo(cfg, client, exp_id, decisions_id):
    """The trajectories not finished yet, as the launcher's jobs."""
    from lradvisor.study.launch import Job

    finished = {
        (r.data.tags.get("arm"), r.data.tags.get("seed"))
        for r in runs_of(client, exp_id, decisions_id, "trajectory")
        if r.info.status == "FINISHED"
    }
    return [
        Job(arm, cfg.train.dataset, seed, f"{arm}:{seed}")
        for arm in cfg.trajectories()
        for seed in cfg.seed_list()
        if (arm, str(seed)) not in finished
    ]


def gather(cfg, client, exp_id, parent, decisions_id, seconds):
    """Every finished trajectory's states and outcomes into the benchmark's run, and its GenAI evaluation dataset."""
    import mlflow.genai.datasets

    states, rows = {}, []
    for r in runs_of(client, exp_id, decisions_id, "trajectory"):
        if r.info.status == "FINISHED" and r.data.tags.get("seed") in {str(s) for s in cfg.seed_list()}:
            got, got_rows = measured(client, r)
            states.update(got)
            rows += got_rows
    with mlflow.start_run(run_id=parent):
        tracking.declare_tables([OUTCOMES])
        mlflow.log_dict(states, STATES)
        tracking.write_table(rows, OUTCOMES)
        best = [headroom(rows, s) for s in states]
        noise = noise_floor(rows, states)
        mlflow.log_metrics(
            {
                "states": len(states),
                "branches": len(rows),
                "build_seconds": seconds,
                "headroom_mean": statistics.mean(best) if best else 0.0,
                **({} if noise is None else {"noise_floor": noise}),
            }
        )
    name = f"decisions-{decisions_id}"
    try:
        dataset = mlflow.genai.datasets.get_dataset(name=name)
    except Exception:
        dataset = mlflow.genai.datasets.create_dataset(
            name=name, experiment_id=[exp_id], tags={"decisions_id": decisions_id}
        )
    dataset.merge_records(
        [
            {
                "inputs": {"state": v["state"], "variables": json.dumps(v)},
                "expectations": {"outcomes": outcomes_of(rows, k)},
            }
            for k, v in states.items()
        ]
    )
    print(
        f"decisions {decisions_id}: {len(states)} states, {len(rows)} branches in {seconds:.0f} s; headroom (best "
        f"action − the scheduler's, validation accuracy, mean over states) {statistics.mean(best) if best else 0:+.2f} "
        f"points; noise floor (replicate spread) {said_noise(noise)}"
    )


def outcomes_of(rows, state, metric="val_acc"):
    """{multiplier as text: mean of the metric over replicates} of a state (validation accuracy: the decision's)."""
    by = {}
    for r in rows:
        if r["state"] == state:
            by.setdefault(f"{r['multiplier']:g}", []).append(r[metric])
    return {m: statistics.mean(v) for m, v in by.items()}


def headroom(rows, state):
    means = outcomes_of(rows, state)
    return max(means.values()) - means["1"]


def noise_floor(rows, states):
    """Mean over states and actions of the standard deviation of the replicates; None with one replicate (a spread
    of one value is no measurement, and 0 would read as noiseless)."""
    by = {}
    for r in rows:
        if r["state"] in states:
            by.setdefault((r["state"], r["multiplier"]), []).append(r["val_acc"])
    if not by or min(map(len, by.values())) < 2:
        return None
    per_state = {}
    for (state, _), v in by.items():
        per_state.setdefault(state, []).append(statistics.pstdev(v))
    return statistics.mean(statistics.mean(v) for v in per_state.values())


def said_noise(noise):
    return "unmeasured (1 replicate)" if noise is None else f"{noise:.2f}"
