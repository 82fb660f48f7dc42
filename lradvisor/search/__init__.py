"""Classical controllers at the LLM's budget: Optuna's TPE or random search over the schedule's knobs, or Ray Tune's
Population Based Training over the LR, charged the epochs the LLM arms used; the winner is trained again on fresh
seeds as arm search_<method>, so that `compare` puts it next to the LLM arms.

    lradvisor search --method tpe --budget-epochs 40 --seeds 0,1,2 --dataset digits --lr 0.02 --batch-size 16

Records, all nested under one parent run `search-<id>` (tag search_id on every one):
    parent   role=search: params (method, budget source, ...), metrics budget_allowed, budget_used (epochs) and
             best_val_acc, tags best.<knob>; Optuna's optimisation-history and parameter-importance plots and its
             trials table (tpe, random), PBT's policy files and the winner's schedule (pbt)
    trials   role=trial (tpe, random): ordinary training runs on seeds 1000 + trial number, never the final seeds,
             with a validation holdout (> 0) that is all they are judged on; a pruned trial ends FINISHED with the
             tag `stopped_early`, a diverged one FAILED
    members  role=member (pbt): one run per member, the LR of each epoch as PBT set it
    winners  role=arm, arm=search_<method>: the best configuration (tpe, random) or the best member's LR schedule
             (pbt, schedule `file`) trained again on --seeds; compare's rows, with the search's epochs as budget
The budget counts every epoch a trial or member trained (its train_loss history: pruned, diverged and interrupted
trials count what they trained); a trial starts only if all its epochs fit in what is left, so budget_used never
exceeds budget_allowed. The winners' own runs are the evaluation, as the LLM arms' runs are, and are not charged.

The space of tpe and random, around the given --lr (the data set's known-good LR):
    lr         log-uniform in [lr/10, 10 lr]
    schedule   one of the ladder's: step, cosine, onecycle, linear, plateau
    step_size  integer in [1, epochs]          (step only)
    gamma      log-uniform in [0.03, 0.5]      (step and plateau)
    momentum   uniform in [0.8, 0.99]          (with --tune-momentum 1; else --momentum as given)
Trials report val_acc after every epoch: the pruner (median, or asha: successive halving) stops the ones behind.
The Optuna study lives in Optuna's own storage (--storage; auto: optuna.db beside an sqlite MLflow store, else in
the working folder. Not MLflow's own file: both keep an `alembic_version` table), so a rerun with the same
--search-id goes on where it stopped.

PBT: --population members start at LRs spread evenly in log scale over [lr/10, 10 lr] and train at a constant LR;
every --perturb-every epochs, all together (synchronous PBT), the bottom quarter copies a top-quarter member's
weights, optimizer and data order (train.snapshot) and perturbs its LR (x1.2 or x0.8, or resampled with
probability 0.25). The best member's lineage, read from the members' own records (whose state each took after
which epoch), gives the LR of every epoch, which the winners follow (--schedule-file); Ray Tune's
PopulationBasedTrainingReplay reads the same from its policy file as a cross-check (see pbt_search).
"""

import os


def main(cfg):
    """A checked SearchConfig in: the search (tpe.py or pbt.py), then its winner on the final seeds. 0 when all of it
    finished."""
    from lradvisor import launcher, tracking
    from lradvisor.search.common import Search, end_stray_runs

    if cfg.method == "pbt":
        from lradvisor.search.pbt import pbt_search as search
    else:
        from lradvisor.search.tpe import optuna_search as search
    s = Search(cfg)
    print(
        f"search {s.id}: {cfg.method} on {cfg.train.dataset}, budget {s.allowed} epochs of trials, winner on seeds "
        f"{cfg.seeds}; parent run {s.parent}"
    )
    with tracking.interrupts_end_runs():
        try:
            knobs, used, key = search(s)
            s.retrain(knobs, used, key)
        except BaseException as e:
            killed = isinstance(e, (KeyboardInterrupt, SystemExit))
            with tracking.signals_held():
                status = "KILLED" if killed else "FAILED"
                end_stray_runs(s.client, s.exp_id, s.id, status, f"the search ended {status}")
                s.client.set_tag(
                    s.parent, "failure_reason", str(e) or "interrupted" if killed else f"{type(e).__name__}: {e}"
                )
                s.client.set_terminated(s.parent, status)
                if killed and launcher.UNDER_MLFLOW_RUN and s.parent == os.environ.get("MLFLOW_RUN_ID"):
                    launcher.outlast(status, s.parent)  # `mlflow run` would mark it FAILED after us
            raise
    s.client.set_terminated(s.parent, "FINISHED")
    name = s.client.get_experiment(s.exp_id).name
    print(
        f"search {s.id}: done; compare: lradvisor compare --experiment {name}\n"
        f"  view: {tracking.ui_link(s.exp_id, s.parent)}"
    )
    return 0
