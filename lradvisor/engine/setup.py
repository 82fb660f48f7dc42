"""A run's set-up: its data on the device, the loaders, the model, the optimizer and the schedule, exactly as every
arm trains (the benchmark times the same); and the snapshots that let an epoch be trained again (guard, credit, PBT).
"""

import contextlib
import copy
import hashlib

import torch

from lradvisor.data.files import holdout_split, load, stratified_subset
from lradvisor.data.loader import Loader
from lradvisor.data.registry import DATASETS
from lradvisor.engine import optimizers, schedules
from lradvisor.engine.device import pick_channels_last, pick_precision
from lradvisor.engine.network import build_model
from lradvisor.engine.state import RunState


def setup(cfg, x_tr, y_tr, x_te, y_te, schedule="step", optimizer="sgd"):
    """(train loader, test loader, model, optimizer, schedule, autocast) on the device the data is on."""
    dev = x_tr.device
    cuda = dev.type == "cuda"
    bf16 = pick_precision(cfg.precision, dev) == "bf16"
    channels_last = pick_channels_last(cfg.channels_last, dev)
    train_loader = Loader(
        x_tr, y_tr, cfg.batch_size, train=True, seed=cfg.seed, channels_last=channels_last, dataset=cfg.dataset
    )
    test_loader = Loader(x_te, y_te, 1000, train=False, seed=cfg.seed, channels_last=channels_last, dataset=cfg.dataset)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(DATASETS[cfg.dataset]["classes"]), cfg.width).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cuda:  # cuDNN picks the fastest convolution algorithms for these shapes once; CPUs have nothing to pick
        torch.backends.cudnn.benchmark = True
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    opt = optimizers.build(optimizer, model.parameters(), cfg, len(train_loader), cuda)
    sched = schedules.build(schedule, opt, cfg, len(train_loader))
    step_model = torch.compile(model) if cfg.compile else model
    return train_loader, test_loader, step_model, opt, sched, autocast


def prepare(cfg, arm, device, data=None):
    """A run's state before its first epoch: the training split, the validation split with holdout > 0 (evaluated
    like the test set: no augmentation) and the test set on the device, and what setup builds on them. `data`: the
    data set as files.load returns it, when the caller has it already (a PBT actor set up again)."""
    x_all, y_all, x_te, y_te = data or load(cfg.data_dir, cfg.dataset)
    keep, held = holdout_split(
        y_all,
        stratified_subset(y_all, cfg.subset_ratio, cfg.seed),
        cfg.holdout,
        cfg.seed,
        DATASETS[cfg.dataset]["classes"],
    )
    put = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    train_loader, test_loader, model, opt, sched, autocast = setup(
        cfg, put(x_all[keep]), put(y_all[keep]), put(x_te), put(y_te), arm.schedule, arm.optimizer
    )
    val_loader = None
    if len(held):
        val_loader = Loader(
            put(x_all[held]),
            put(y_all[held]),
            1000,
            train=False,
            seed=cfg.seed,
            channels_last=test_loader.channels_last,
            dataset=cfg.dataset,
        )
    return RunState(cfg, arm, model, opt, sched, autocast, train_loader, val_loader, test_loader)


def sizes(s):
    """(n_train, n_val, n_test) of a run's splits."""
    return len(s.train_loader.y), len(s.val_loader.y) if s.val_loader else 0, len(s.test_loader.y)


def snapshot(model, opt, sched, loader):
    """Everything an epoch changes, kept on the device, so that the epoch can be trained again (guard)."""
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "opt": copy.deepcopy(opt.state_dict()),
        "sched": copy.deepcopy(sched.state_dict()),
        "rng": loader.generator.get_state(),
    }


def restore(snap, model, opt, sched, loader):
    model.load_state_dict(snap["model"])
    opt.load_state_dict(snap["opt"])
    sched.load_state_dict(snap["sched"])
    loader.generator.set_state(snap["rng"])


def weights_digest(model):
    """sha256 of the final weights (every state_dict tensor's bytes, in order): two runs that say they trained
    the same can be checked bit for bit."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.removeprefix("_orig_mod.").encode())  # compiled or not: the same weights, the same digest
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
