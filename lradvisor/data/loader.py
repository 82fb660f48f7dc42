"""Batches on the training device. The whole data set lives there as uint8 (150 MB for CIFAR's train set), and crop,
flip and normalisation are done on whole batches with tensor ops, the way airbench does it: no DataLoader, no worker
processes, no per-image Python. The same code runs on CPU for the tests.
"""

import torch

from lradvisor.data.registry import DATASETS, MEAN, STD


def normalize(x_uint8, mean=MEAN, std=STD):
    """uint8 NCHW -> float normalised with the data set's channel statistics (CIFAR-10's by default)."""
    mean = torch.tensor(mean, device=x_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float() / 255 - mean) / std


def augment(x_padded, generator, pad=4, flip=True):
    """Random 32x32 crop of 4-pixel zero-padded images and (flip=True) a random horizontal flip, per image, as
    one gather over the whole batch (the same distribution as torchvision's RandomCrop(32, 4) + flip)."""
    n, c, hp, wp = x_padded.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = x_padded.device
    dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    cols = torch.arange(w, device=dev).expand(n, w)
    if flip:
        flips = torch.rand(n, device=dev, generator=generator) < 0.5
        cols = torch.where(flips[:, None], w - 1 - cols, cols)  # a flip is reading the columns backwards
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + cols
    i = torch.arange(n, device=dev)[:, None, None, None]
    ch = torch.arange(c, device=dev)[None, :, None, None]
    return x_padded[i, ch, rows[:, None, :, None], cols[:, None, None, :]]


class Loader:
    """Shuffled, augmented, normalised batches of a uint8 dataset that already sits on `device`."""

    def __init__(self, x, y, batch_size, train, seed, channels_last=False, drop_last=False, dataset="cifar10"):
        self.x, self.y, self.batch_size, self.train = x, y, batch_size, train
        self.channels_last, self.drop_last = channels_last, drop_last
        self.dataset = dataset  # its normalisation, flips and class names
        ds = DATASETS[dataset]
        self.mean, self.std, self.flip = ds["mean"], ds["std"], ds["flip"]
        # Pad once up front; per batch only the crop offsets change.
        self.x_padded = torch.nn.functional.pad(x, (4, 4, 4, 4)) if train else None
        self.generator = torch.Generator(device=x.device)
        self.generator.manual_seed(seed)

    def __len__(self):
        n = len(self.x)
        # A last training batch of one image would break BatchNorm; drop it (only tiny subsets hit this).
        drop = self.drop_last or (self.train and n % self.batch_size == 1 and n > 1)
        return n // self.batch_size if drop else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        order = torch.randperm(n, device=self.x.device, generator=self.generator) if self.train else None
        for k in range(len(self)):
            sl = slice(k * self.batch_size, (k + 1) * self.batch_size)
            if self.train:
                idx = order[sl]
                xb, yb = augment(self.x_padded[idx], self.generator, flip=self.flip), self.y[idx]
            else:
                xb, yb = self.x[sl], self.y[sl]
            xb = normalize(xb, self.mean, self.std)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb
