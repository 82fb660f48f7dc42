"""The decision benchmark: every candidate LR measured once from the same training states, and any advisor scored
by regret in minutes, paired by state, without training anything (`lradvisor decisions build`, `... score`).

A sweep answers "does this advisor beat the schedule?" with arms x seeds of whole runs, and at the seeds anyone can
afford its verdicts are inconclusive. The benchmark takes the credit of a decision (engine/credit.py) to its end:

    build   trajectories (the baseline's schedule on every seed, and any --from-arms, e.g. random_control so that
            the states differ) are trained, and at each decision point every action of a grid of LRs (multiples of
            the scheduler's) is trained --horizon epochs from that state, in --replicates data orders, and judged on
            the validation split and the test set (build.py). Short horizons can mislead: lowering the LR helps now
            and may hurt later (the short-horizon bias of Wu, Ren, Liao & Grosse, ICLR 2018); --horizon end trains to
            the end of the run, the schedule resuming after the action.
    score   an arm asked at every state, its chosen LR mapped to the outcome it would have had (score.py):
            regret = the best action's − it, gain = it − the scheduler's. The best action's gain is the headroom:
            how much any advisor could win at all.

Records: the benchmark's run `decisions-<id>` (its settings as params; decisions/outcomes.json, one row per state x
action x replicate; decisions/states.json, what every prompt needs; an MLflow GenAI evaluation dataset of both), its
trajectories nested under it; every scoring an evaluation run (`score-<arm>-<id>`, tags decisions_id and arm,
decisions/scores.json, regret_mean, gain_mean).
"""


def main(cfg):
    from lradvisor.config.decisions import DecisionsConfig

    if isinstance(cfg, DecisionsConfig):
        from lradvisor.decisions import build

        return build.main(cfg)
    from lradvisor.decisions import score

    return score.main(cfg)
