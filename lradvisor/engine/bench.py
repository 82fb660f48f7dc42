"""Benchmark: our training loop against the way typical CIFAR code trains, in one process, on the same data.

1. ours: exactly what an arm runs (engine/setup.py + train_epoch + evaluate): uint8 data on the device, batch
   augmentation with tensor ops, no host sync per step, bf16 autocast + channels_last + fused SGD on CUDA.
2. reference: a torchvision-style Dataset + DataLoader with PIL transforms (crop, flip, ToTensor,
   Normalize), fp32, `loss.item()` every step, evaluation every epoch.

Prints one JSON line per loop (and ours carries the speed-up over the reference). FLOPs use the CIFAR
ResNet-18 count: ~0.56 GMAC forward per image, so ~3.3 GFLOP per trained image (forward + backward) and
~1.1 GFLOP per evaluated image.
"""

import dataclasses
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_FLOP, EVAL_FLOP = 3.3e9, 1.1e9
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, to put achieved numbers in context.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
}


def peak_tflops(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def get_data(cfg):
    """Real CIFAR-10 when data_dir holds it, else random CIFAR-shaped data (speed does not depend on it)."""
    from lradvisor.data.files import load
    from lradvisor.data.registry import FOLDER

    if os.path.isdir(os.path.join(cfg.data_dir, FOLDER)):
        x_tr, y_tr, x_te, y_te = load(cfg.data_dir)
        source = "cifar10"
    else:
        rng = np.random.default_rng(0)
        x_tr = rng.integers(0, 256, (cfg.train_size, 3, 32, 32), dtype=np.uint8)
        x_te = rng.integers(0, 256, (cfg.test_size, 3, 32, 32), dtype=np.uint8)
        y_tr, y_te = rng.integers(0, 10, cfg.train_size), rng.integers(0, 10, cfg.test_size)
        source = "synthetic"
    return x_tr[: cfg.train_size], y_tr[: cfg.train_size], x_te[: cfg.test_size], y_te[: cfg.test_size], source


def time_ours(cfg, device, x_tr, y_tr, x_te, y_te):
    from lradvisor.config import TrainConfig
    from lradvisor.engine.loop import evaluate, train_epoch
    from lradvisor.engine.setup import setup

    run = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        compile=cfg.compile,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
    )  # the published setup otherwise
    x_tr, y_tr = torch.from_numpy(x_tr).to(device), torch.from_numpy(y_tr).to(device)
    x_te, y_te = torch.from_numpy(x_te).to(device), torch.from_numpy(y_te).to(device)
    train_loader, test_loader, model, opt, sched, autocast = setup(run, x_tr, y_tr, x_te, y_te)
    epochs = []
    for _ in range(cfg.epochs):
        sync(device)
        t0 = time.perf_counter()
        train_epoch(model, opt, train_loader, autocast)  # ends in its one sync
        t1 = time.perf_counter()
        acc = evaluate(model, test_loader, autocast).acc
        epochs.append((t1 - t0, time.perf_counter() - t1, acc))
        sched.step()
    return epochs


def time_reference(cfg, device, x_tr, y_tr, x_te, y_te):
    """How most CIFAR code trains: PIL transforms in DataLoader workers, fp32, .item() every step."""
    import torchvision.transforms as T
    from PIL import Image

    from lradvisor.data.registry import MEAN, STD
    from lradvisor.engine.network import build_model

    class Cifar(torch.utils.data.Dataset):
        def __init__(self, x, y, transform):
            self.x, self.y, self.transform = x.transpose(0, 2, 3, 1), y, transform  # HWC for PIL

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.x[i])), int(self.y[i])

    norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
    train_set = Cifar(x_tr, y_tr, T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *norm]))
    test_set = Cifar(x_te, y_te, T.Compose(norm))
    pin = device.type == "cuda"
    train_loader = torch.utils.data.DataLoader(
        train_set,
        cfg.batch_size,
        shuffle=True,
        num_workers=cfg.workers,
        pin_memory=pin,
        persistent_workers=cfg.workers > 0,
    )
    test_loader = torch.utils.data.DataLoader(test_set, 1000, num_workers=cfg.workers, pin_memory=pin)
    torch.manual_seed(0)
    model = build_model("resnet18").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    epochs = []
    for _ in range(cfg.epochs):
        sync(device)
        t0 = time.perf_counter()
        model.train()
        total = 0.0
        for xb, yb in train_loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()  # the per-step sync typical code has
        t1 = time.perf_counter()
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for xb, yb in test_loader:
                out = model(xb.to(device))
                correct += (out.argmax(1).cpu() == yb).sum().item()
                n += len(yb)
        epochs.append((t1 - t0, time.perf_counter() - t1, 100 * correct / n))
    return epochs


def summarize(loop, epochs, cfg, device, n_train, n_test, source):
    # The first epoch carries warm-up (cuDNN autotuning, torch.compile): report it apart from the steady state.
    steady = epochs[1:] or epochs
    train_s = float(np.mean([e[0] for e in steady]))
    eval_s = float(np.mean([e[1] for e in steady]))
    ips = n_train / train_s
    tflops = ips * TRAIN_FLOP / 1e12
    peak = peak_tflops(device)
    from lradvisor.engine.device import pick_channels_last, pick_precision

    ours = loop == "ours"
    return {
        "loop": loop,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "precision": pick_precision(cfg.precision, device) if ours else "fp32",
        "channels_last": pick_channels_last(cfg.channels_last, device) if ours else False,
        "torch": torch.__version__,
        "data": source,
        "n_train": n_train,
        "n_test": n_test,
        "batch_size": cfg.batch_size,
        "epochs": len(epochs),
        "compile": bool(cfg.compile) and loop == "ours",
        "train_images_per_s": round(ips, 1),
        "seconds_per_epoch": round(train_s + eval_s, 3),
        "train_seconds_per_epoch": round(train_s, 3),
        "eval_seconds": round(eval_s, 3),
        "first_epoch_extra_s": round(epochs[0][0] + epochs[0][1] - train_s - eval_s, 3),
        "achieved_tflops": round(tflops, 3),
        "peak_tflops_bf16": peak,
        "fraction_of_peak": round(tflops / peak, 4) if peak else None,
        "final_test_acc": round(epochs[-1][2], 2),
    }


def concurrent(cfg):
    """Sweep throughput: N processes of our loop at once on the same device, against one alone."""
    import subprocess
    import sys

    from lradvisor.config import to_flags

    cmd = [sys.executable, "-m", "lradvisor", "bench", *to_flags(dataclasses.replace(cfg, loops="ours", processes=1))]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(cfg.processes)]
    lines = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("benchmark: a concurrent process failed")
    total = sum(r["train_images_per_s"] for r in lines)
    print(
        json.dumps(
            {
                "loop": f"ours x{cfg.processes} concurrent",
                "device": lines[0]["device"],
                "torch": lines[0]["torch"],
                "processes": cfg.processes,
                "total_train_images_per_s": round(total, 1),
                "per_process_train_images_per_s": [r["train_images_per_s"] for r in lines],
                "achieved_tflops": round(total * TRAIN_FLOP / 1e12, 3),
            }
        ),
        flush=True,
    )
    return 0


def main(cfg):
    if cfg.processes > 1:
        return concurrent(cfg)
    from lradvisor.engine.device import pick_device

    device = pick_device(cfg.device)
    loops = [s.strip() for s in cfg.loops.split(",") if s.strip()]
    if not loops or any(s not in ("ours", "reference") for s in loops) or cfg.epochs < 1:
        raise SystemExit("benchmark: --loops takes ours and/or reference, --epochs must be >= 1")
    x_tr, y_tr, x_te, y_te, source = get_data(cfg)
    results = {}
    for loop in loops:
        timer = time_ours if loop == "ours" else time_reference
        results[loop] = summarize(
            loop, timer(cfg, device, x_tr, y_tr, x_te, y_te), cfg, device, len(y_tr), len(y_te), source
        )
    if len(results) == 2:
        results["ours"]["speedup_vs_reference"] = round(
            results["ours"]["train_images_per_s"] / results["reference"]["train_images_per_s"], 2
        )
    for r in results.values():
        print(json.dumps(r), flush=True)
    return 0
