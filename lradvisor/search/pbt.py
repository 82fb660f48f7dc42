"""pbt: Ray Tune's PopulationBasedTraining over the LR. Each member is a Ray Tune Trainable that trains one epoch of
the engine (engine/loop.py) per step at the LR PBT gives it; its checkpoints are engine/setup.py's snapshots, so an
exploited member goes on with its donor's weights, optimizer state and data order. The winner's schedule is its
lineage, read from the members' own records."""

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time

from lradvisor.config import TRIAL_SEEDS
from lradvisor.errors import SearchError
from lradvisor.search.common import budget_used, end_stray_runs, mlflow_uri, param, search_runs

# What a member logs of each epoch (engine/state.py's Epoch.metrics has these and more), in this order.
MEMBER_METRICS = ("lr", "train_loss", "train_acc", "grad_norm", "val_loss", "val_acc", "test_loss", "test_acc")


class Member:
    """One PBT member as a Ray Tune Trainable (the class is made in pbt_search, where Ray is imported): step() trains
    one epoch of the engine at config["lr"] and logs it to the member's run; save/load_checkpoint are the engine's
    snapshot/restore."""

    def setup(self, config, job):
        import mlflow
        from mlflow.tracking import MlflowClient

        from lradvisor.arms import resolve
        from lradvisor.data.files import load
        from lradvisor.engine.device import pick_device
        from lradvisor.engine.run import params_of
        from lradvisor.engine.setup import prepare

        os.environ.update(job["env"])
        quiet_ray()
        mlflow.set_tracking_uri(job["env"]["MLFLOW_TRACKING_URI"])
        self.client, self.job = MlflowClient(), job
        device = pick_device(job["cfg"].device)
        if not hasattr(self, "data"):  # an actor reused for another member keeps the data it read
            self.data = load(job["cfg"].data_dir, job["cfg"].dataset)
        seed = TRIAL_SEEDS + config["member"]  # the first start; an exploited member takes its donor's state
        cfg = dataclasses.replace(job["cfg"], seed=seed, lr=config["lr"])
        arm = resolve("search_pbt", schedule="constant")  # PBT sets the LR of every epoch itself
        self.state = prepare(cfg, arm, device, self.data)
        found = [
            r
            for r in search_runs(self.client, job["exp_id"], job["search_id"], "member")
            if r.data.tags.get("trial") == self.trial_id
        ]
        if found:  # a member paused or exploited and started again: the same run goes on
            self.run_id = found[0].info.run_id
        else:
            tags = {
                "mlflow.parentRunId": job["parent"],
                "search_id": job["search_id"],
                "method": "pbt",
                "role": "member",
                "seed": str(seed),
                "trial": self.trial_id,
                "arm": "search_pbt",
            }
            self.run_id = self.client.create_run(
                job["exp_id"], run_name=f"search_pbt-member{config['member']}", tags=tags
            ).info.run_id
            p = params_of(cfg, arm, None, device, self.state)
            self.client.log_batch(self.run_id, params=[param(k, v) for k, v in p.items()])

    def reset_config(self, new_config):
        """Ray Tune reuses this actor for another member (or this one, exploited): set up afresh, without the
        process start-up; the checkpoint it is given next brings the state."""
        Member.setup(self, new_config, self.job)  # ours: tune.with_parameters wraps setup to take the config alone
        return True

    def step(self):
        from mlflow.entities import Metric

        from lradvisor.engine import schedules
        from lradvisor.engine.loop import train_and_evaluate
        from lradvisor.errors import TrainingError

        s = self.state
        if s.epoch != self.iteration:  # Ray Tune's count and the weights' own: said, and the weights' is followed
            said = json.loads(self.client.get_run(self.run_id).data.tags.get("pbt_count_differs", "[]"))
            self.client.set_tag(self.run_id, "pbt_count_differs", json.dumps(said + [[self.iteration, s.epoch]]))
        s.epoch += 1  # the epoch this step trains, counted along the weights' history (restored with them)
        schedules.override(s.sched, s.opt, self.config["lr"])
        t0 = time.perf_counter()
        try:
            train_and_evaluate(s)
            m = {k: s.current.metrics[k] for k in MEMBER_METRICS}
        except TrainingError:  # diverged: the worst member, to be replaced at the next perturbation
            m = {
                "lr": self.config["lr"],
                "train_loss": s.trained.loss,
                "train_acc": s.trained.acc,
                "grad_norm": s.trained.grad_norm,
                "val_loss": math.inf,
                "val_acc": 0.0,
                "test_loss": math.inf,
                "test_acc": 0.0,
            }
        m["epoch_seconds"] = time.perf_counter() - t0
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, s.epoch) for k, v in m.items()])
        return {"val_acc": m["val_acc"], "train_loss": m["train_loss"], "test_acc": m["test_acc"], "epoch": s.epoch}

    def save_checkpoint(self, checkpoint_dir):
        import torch

        from lradvisor.engine.setup import snapshot

        s = self.state
        state = snapshot(s.model, s.opt, s.sched, s.train_loader)
        torch.save(
            {
                **state,
                "run_name": self.client.get_run(self.run_id).info.run_name,
                "run_id": self.run_id,
                "trial": self.trial_id,
                "epoch": s.epoch,  # the epochs these weights have trained, along their own history
            },
            os.path.join(checkpoint_dir, "state.pt"),
        )

    def load_checkpoint(self, checkpoint_dir):
        """Our own state after a pause, or a donor's (exploit): the run's tag `pbt_exploits` says whose, when."""
        import torch

        from lradvisor.engine.setup import restore

        s = self.state
        state = torch.load(
            os.path.join(checkpoint_dir, "state.pt"), map_location=s.train_loader.x.device, weights_only=False
        )
        state["rng"] = state["rng"].cpu()  # a generator's state is a CPU tensor, whatever the device
        restore(state, s.model, s.opt, s.sched, s.train_loader)
        s.epoch = state["epoch"]
        if state["trial"] != self.trial_id:  # said for people (pbt_exploits) and for lineage() (pbt_cloned)
            tags = self.client.get_run(self.run_id).data.tags
            now = f"after epoch {s.epoch}: the weights, optimizer and data order of {state['run_name']}"
            said = tags.get("pbt_exploits")
            self.client.set_tag(self.run_id, "pbt_exploits", f"{said}; {now}" if said else now)
            cloned = json.loads(tags.get("pbt_cloned", "[]")) + [[s.epoch, state["run_id"]]]
            self.client.set_tag(self.run_id, "pbt_cloned", json.dumps(cloned))


def lineage(client, run, epochs):
    """The LR of every epoch along the history of a member's weights, from the members' own records: its own LRs
    after the last time it took another member's state (tag pbt_cloned: [[after epoch, donor run id], ...]), the
    donor's lineage before."""
    own = {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.timestamp)}
    earlier = [(k, donor) for k, donor in json.loads(run.data.tags.get("pbt_cloned", "[]")) if k < epochs]
    k, donor = max(earlier) if earlier else (0, None)
    missing = [e for e in range(k + 1, epochs + 1) if e not in own]
    if missing:
        raise SearchError(
            f"member {run.info.run_name} ({run.info.run_id}) has no LR recorded for epoch(s) {missing}: the winner's "
            "schedule cannot be read from the members' records; nothing was trained again"
        )
    return (lineage(client, client.get_run(donor), k) if donor else []) + [own[e] for e in range(k + 1, epochs + 1)]


def replay_schedule(policy_file, lr, epochs):
    """The LR of every epoch as Ray Tune's PopulationBasedTrainingReplay reads a member's policy file (the member's
    own constant LR when it never took another's state)."""
    from ray.tune.schedulers import PopulationBasedTrainingReplay

    changes = []
    if os.path.exists(policy_file):
        replay = PopulationBasedTrainingReplay(policy_file)
        lr, changes = replay.config["lr"], list(replay._policy)  # [(the step after which, the new config)]
    schedule = []
    for epoch in range(1, epochs + 1):
        while changes and changes[0][0] < epoch:
            lr = changes.pop(0)[1]["lr"]
        schedule.append(lr)
    return schedule


def quiet_ray():
    """Ray Tune's INFO lines (every checkpoint, every file written) would bury ours; PBT's own exploit and explore
    lines stay: they are the search's decisions."""
    import logging

    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.INFO)
    logging.getLogger("ray.tune.logger").setLevel(logging.ERROR)  # reused actors: "Remote file not found" per member


def pbt_search(s):
    import random

    import ray

    from lradvisor import tracking
    from lradvisor.study import ray_launch

    cfg = s.cfg
    if not ray.is_initialized():  # the CLI connected before any run existed (cli.check_resources)
        ray_launch.ray_connect(cfg.ray_address, cfg.cpus_per_run, cfg.gpus_per_run)
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    random.seed(cfg.search_seed)  # PBT draws its exploits and perturbations from Python's random
    quiet_ray()
    n = cfg.population
    lrs = [cfg.train.lr * 10 ** (-1 + 2 * (i + 0.5) / n) for i in range(n)]  # even in log scale over [lr/10, 10 lr]
    pbt = PopulationBasedTraining(
        time_attr="epoch",  # the weights' own count (Member.step), not Ray Tune's, which a restore can set off
        perturbation_interval=cfg.perturb_every,
        hyperparam_mutations={"lr": tune.loguniform(cfg.train.lr / 10, cfg.train.lr * 10)},
        synch=True,
    )  # synchronous: every member trains exactly --epochs epochs
    member = type("PBTMember", (Member, tune.Trainable), {})
    # The tracking server's address and credentials (no LLM's: members ask none), as an argument: in no config Ray
    # shows.
    env = {k: os.environ[k] for k in ray_launch.FORWARD if k in os.environ and k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = mlflow_uri()
    job = {
        "cfg": cfg.trial(s.arm, TRIAL_SEEDS, schedule="constant", data_dir=os.path.abspath(cfg.train.data_dir)),
        "env": env,
        "exp_id": s.exp_id,
        "search_id": s.id,
        "parent": s.parent,
    }
    trainable = tune.with_resources(
        tune.with_parameters(member, job=job), {"cpu": cfg.cpus_per_run, "gpu": float(cfg.gpus_per_run)}
    )
    folder = tempfile.mkdtemp(prefix=f"lradvisor-pbt-{s.id}-")
    # Ctrl-C: Tune's own handler would stop the population "gracefully" and return as if it had finished; ours
    # raises, the runs end KILLED, and no winner is trained from half a search.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no banner tables, no TensorBoard hint
    tracking.sqlite_for_many_writers()  # members write to a local sqlite store at once
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={
                "member": tune.grid_search(list(range(n))),
                "lr": tune.sample_from(lambda config: lrs[config["member"]]),
            },
            tune_config=tune.TuneConfig(scheduler=pbt, metric="val_acc", mode="max", reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"pbt-{s.id}",
                storage_path=folder,
                verbose=0,
                stop={"epoch": cfg.train.epochs},
                # a member that fails ends the search: synchronous PBT would
                # otherwise wait for it forever
                failure_config=tune.FailureConfig(fail_fast=True),
            ),
        )
        print(
            f"search {s.id}: PBT, {n} members from LR "
            + ", ".join(f"{x:.3g}" for x in lrs)
            + f", perturbing every {cfg.perturb_every} epochs"
        )
        grid = tuner.fit()
        for r in search_runs(s.client, s.exp_id, s.id, "member"):  # members never end their own runs (see Member)
            steps = [m.step for m in s.client.get_metric_history(r.info.run_id, "train_loss")]
            if r.info.status == "RUNNING" and steps and max(steps) == cfg.train.epochs:
                s.client.set_terminated(r.info.run_id, "FINISHED")
        end_stray_runs(s.client, s.exp_id, s.id, "FAILED", "its Ray Tune trial ended before its last epoch")
        if grid.errors:
            last = [line for line in str(grid.errors[0]).splitlines() if line.strip()][-1]
            raise SearchError(f"a PBT member failed ({last}); the population stopped; nothing was trained again")
        return winner(s, grid, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        ray.shutdown()


def winner(s, grid, folder):
    """The best member's schedule (its lineage), the parent's records of it and of PBT's policy files, and the knobs
    the winner is trained again with: (knobs, epochs used, the winner's key)."""
    cfg = s.cfg
    best = grid.get_best_result(metric="val_acc", mode="max", scope="last")
    policy = [
        os.path.join(grid.experiment_path, f)
        for f in os.listdir(grid.experiment_path)
        if f.startswith("pbt_") and f.endswith(".txt")
    ]
    runs = {r.data.tags["trial"]: r for r in search_runs(s.client, s.exp_id, s.id, "member")}
    schedule = lineage(s.client, runs[best.metrics["trial_id"]], cfg.train.epochs)
    # Ray Tune's replay of the same member, as a cross-check: under synchronous PBT with paused members its
    # policy log has recorded a clone's iteration one epoch short (seen here), and its replay then moves an
    # LR change by an epoch. The members' own records decide; a disagreement is said and tagged.
    ray_said = replay_schedule(
        os.path.join(grid.experiment_path, f"pbt_policy_{best.metrics['trial_id']}.txt"),
        best.config["lr"],
        cfg.train.epochs,
    )
    if not all(math.isclose(a, b) for a, b in zip(schedule, ray_said)):
        print(
            f"search {s.id}: Ray Tune's PopulationBasedTrainingReplay reads the winner's LRs as "
            + ", ".join(f"{x:.3g}" for x in ray_said)
            + "; its members' records say otherwise and are followed"
        )
        s.client.set_tag(s.parent, "pbt_replay_disagrees", json.dumps(ray_said))
    with open(os.path.join(folder, "schedule.json"), "w") as f:
        json.dump({"lr": schedule}, f)
    for path in policy:
        s.client.log_artifact(s.parent, path, "pbt")
    s.client.log_artifact(s.parent, os.path.join(folder, "schedule.json"), "pbt")
    used = budget_used(s.client, s.exp_id, s.id)
    print(
        f"search {s.id}: best member {best.metrics['trial_id']} (val_acc {best.metrics['val_acc']:.2f}%), "
        f"{used} of {s.allowed} epochs; its LR by epoch: " + ", ".join(f"{x:.3g}" for x in schedule)
    )
    s.finish(used, best.metrics["val_acc"], {"member": best.metrics["trial_id"], "lr_schedule": schedule})
    keep = os.path.join(tempfile.gettempdir(), f"lradvisor-pbt-{s.id}-schedule.json")
    shutil.copy(os.path.join(folder, "schedule.json"), keep)
    # lr: the param says what epoch 1 trains at
    return {"schedule_file": keep, "lr": schedule[0]}, used, json.dumps(schedule)
