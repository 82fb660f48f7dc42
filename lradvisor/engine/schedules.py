"""LR schedules, each a `torch.optim.lr_scheduler` as it comes, and how an advisor's LR joins them.

    step      StepLR(step_size, gamma), stepped after each epoch (the published baseline)
    cosine    CosineAnnealingLR to 0 over the run, stepped after every batch
    onecycle  OneCycleLR with max_lr = lr (warm-up 30 %, from lr/25 down to lr/25e4), every batch; momentum is
              not cycled, so the run's `momentum` param stays true
    linear    LinearLR from lr to 0 over the run, every batch
    plateau   ReduceLROnPlateau on the training loss (factor gamma, patience 2 epochs), after each epoch
    constant  MultiplicativeLR with factor 1: the LR stays
    file      the LR of each epoch read from --schedule-file (`{"lr": [epoch 1's, epoch 2's, ...]}`), stepped after
              each epoch: how a Population Based Training winner's schedule is trained again (search/pbt.py)

When an advisor sets the next epoch's LR to x where the schedule had s, the rest of the schedule is scaled
by x / s: StepLR, plateau, cosine and linear are chainable (each step multiplies the LR the optimizer has),
so writing x into the optimizer is all it takes; OneCycleLR computes the LR from its own anchors, so those
(initial_lr, max_lr, min_lr) are scaled too. Constant keeps x.
"""

from torch.optim import lr_scheduler

from lradvisor.arms import SCHEDULES, read_schedule_file

PER_STEP = ("cosine", "onecycle", "linear")  # stepped after every batch; the others after each epoch


def build(name, opt, cfg, steps_per_epoch):
    total = cfg.epochs * steps_per_epoch
    if name == "step":
        return lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
    if name == "onecycle":
        return lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, cycle_momentum=False)
    if name == "linear":
        return lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=total)
    if name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.gamma, patience=2)
    if name == "constant":
        return lr_scheduler.MultiplicativeLR(opt, lambda _: 1.0)
    if name == "file":  # LambdaLR multiplies the initial LR: divided out, epoch e trains at the file's e-th LR
        lrs = read_schedule_file(cfg.schedule_file)
        return lr_scheduler.LambdaLR(opt, lambda e: lrs[min(e, len(lrs) - 1)] / cfg.lr)
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def after_epoch(name, sched, train_loss):
    if name == "plateau":
        sched.step(train_loss)
    elif name not in PER_STEP:
        sched.step()


def override(sched, opt, new_lr):
    """Set the LR of the next epoch to new_lr; the schedule goes on from there, scaled (see above)."""
    for group in opt.param_groups:
        if isinstance(sched, lr_scheduler.OneCycleLR) and group["lr"] > 0:
            scale = new_lr / group["lr"]
            for key in ("initial_lr", "max_lr", "min_lr"):
                group[key] *= scale
        group["lr"] = new_lr
