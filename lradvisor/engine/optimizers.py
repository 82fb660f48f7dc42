"""The optimizer an arm trains with (its `optimizer` field, arms.py): SGD, as published and as every arm an advisor,
a schedule or a search steers; or one of three that set their own step size, each with its library's recommended
settings for CNN training (README: LR-free optimizers, with the sources):

    schedulefree  schedulefree.SGDScheduleFree (Defazio et al. 2024): lr 10 x the run's lr (its README: "10x-50x
                  larger than classical rates"; 1.0 at the published 0.1, its own default), the run's momentum and
                  weight decay, a linear warm-up over the first 5 % of steps ("recommended"), no schedule ("no need").
                  It trains at one sequence of weights (y) and is evaluated at their average (x): optimizer.train()
                  before training, optimizer.eval() before evaluating, and batch-norm statistics recomputed at x first
                  (its README's BatchNorm caveat; ScheduleFreeModes below)
    prodigy       prodigyopt.Prodigy (Mishchenko & Defazio 2024): lr 1 ("for all networks"), the run's weight decay
                  (decoupled, its default), cosine annealing over the run ("no scheduler or cosine annealing")
    dadapt_sgd    dadaptation.DAdaptSGD (Defazio & Mishchenko 2023): lr 1 ("set the LR parameter to 1.0"), the run's
                  momentum and weight decay, and the schedule one would use anyway: the published StepLR

`effective_lr` is the step size each one trains at (Prodigy's d x lr, D-Adaptation's d x lr / |g0|, schedule-free's
warmed-up lr): the run's lr and lr_step metrics, so that its curve overlays the others'. The adaptive two read their
estimate of d back from the device inside every step (their implementation), so on CUDA they sync per step.
"""

import torch

from lradvisor.data.loader import Loader

OPTIMIZERS = ("sgd", "schedulefree", "prodigy", "dadapt_sgd")
WARMUP = 0.05  # schedulefree: the share of steps warmed up


def settings(name, cfg, steps_per_epoch):
    """An optimizer's settings beyond the run's params (logged as optimizer.<key>): its library's recommended ones."""
    return {
        "sgd": {},
        "schedulefree": {
            "lr": 10 * cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "warmup_steps": round(WARMUP * cfg.epochs * steps_per_epoch),
        },
        "prodigy": {"lr": 1.0, "weight_decay": cfg.weight_decay},
        "dadapt_sgd": {"lr": 1.0, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
    }[name]


def build(name, params, cfg, steps_per_epoch, cuda=False):
    kw = settings(name, cfg, steps_per_epoch)
    if name == "sgd":  # fused: one kernel for all parameters on CUDA; on CPU the foreach path is as fast
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            **({"fused": True} if cuda else {"foreach": True}),
        )
    if name == "schedulefree":
        import schedulefree

        return schedulefree.SGDScheduleFree(params, **kw)
    if name == "prodigy":
        import prodigyopt

        return prodigyopt.Prodigy(params, **kw)
    import dadaptation

    return dadaptation.DAdaptSGD(params, **kw)


def effective_lr(opt):
    """The step size the next step trains at, a host float (no device read)."""
    g = opt.param_groups[0]
    if "d" in g and "d_coef" in g:  # Prodigy
        return g["d"] * g["lr"]
    if "d" in g:  # D-Adaptation SGD: its step is d x lr / |the first gradient| (not yet known before the first step)
        return g["d"] * g["lr"] / (g.get("g0_norm") or 1.0)
    if "warmup_steps" in g:  # schedule-free: the z sequence's step, warmed up as its step() does
        return g["lr"] * min(1.0, (g["k"] + 1) / g["warmup_steps"]) if g["warmup_steps"] else g["lr"]
    return g["lr"]


class ScheduleFreeModes:
    """schedulefree's train and eval modes around each epoch (a handler: engine/loop.py's events): it trains at y,
    and is evaluated (and its weights recorded) at x, with batch-norm statistics recomputed at x from up to 50
    batches of the training images, unaugmented, so that the training data order is not touched."""

    def epoch_start(self, s) -> None:  # s: the RunState (engine/state.py imports this module)
        s.opt.train()

    def epoch_trained(self, s) -> None:  # s: the RunState (engine/state.py imports this module)
        s.opt.eval()
        loader = s.train_loader
        images = Loader(
            loader.x,
            loader.y,
            loader.batch_size,
            train=False,
            seed=0,
            channels_last=loader.channels_last,
            dataset=loader.dataset,
        )
        s.model.train()
        with torch.no_grad(), s.autocast():
            for i, (xb, _) in enumerate(images):
                if i == 50:
                    break
                s.model(xb)
        s.model.eval()
