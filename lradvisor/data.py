"""CIFAR-10: find or download the python-format batches, read them safely, and serve augmented batches.

The whole dataset lives on the training device as uint8 (150 MB for the train set), and crop, flip and
normalisation are done on whole batches with tensor ops, the way airbench does it: no DataLoader, no
worker processes, no per-image Python. The same code runs on CPU for the tests.
"""

import hashlib
import os
import pickle
import warnings

import numpy as np
import torch

from lradvisor.arms import UsageError

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
# Standard CIFAR-10 per-channel statistics (of the training set), as most CIFAR code uses.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class DataError(UsageError):
    """The data set is missing or unreadable; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------------------
# Reading the batch files

class _BatchUnpickler(pickle.Unpickler):
    """The batch files are pickles written by Python 2 numpy. They need numpy's array reconstructors and
    nothing else, so anything else (os.system, builtins.eval, ...) is refused: a crafted file in data_dir
    cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes; it only converts text

    }

    def find_class(self, module, name):
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):
            return _empty_bytes  # how numpy pickles the buffer of an array with no images
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the CIFAR-10 format")
        return super().find_class(module, name)


def _empty_bytes(*args):
    if args:  # bytes(n) would allocate n bytes: only the empty buffer is part of the format
        raise pickle.UnpicklingError("refusing to load builtins.bytes with arguments: not part of the CIFAR-10 format")
    return b""


def _read_batch(path):
    with open(path, "rb") as f:
        try:
            d = _BatchUnpickler(f, encoding="latin1").load()
        except Exception as e:
            raise DataError(f"cannot read {path}: {e}; replace it with the file from the official archive") from e
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path} is not a CIFAR-10 batch (it has no 'data' and 'labels')")
    x, y = d["data"], d["labels"]
    # A wrong file would otherwise fail deep in a reshape, index out of range mid-run, or (labels fewer than
    # images) train misaligned and finish as if nothing were wrong.
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3 * 32 * 32):
        shape = getattr(x, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
                        f"{type(x).__name__} {getattr(x, 'dtype', '')} {shape}; replace it with the official file")
    if len(x) == 0:
        raise DataError(f"{path} is an empty batch (0 images); replace it with the official file")
    try:
        y = np.asarray(y)
        ok = y.ndim == 1 and np.issubdtype(y.dtype, np.integer)
    except Exception:
        ok = False
    if not ok:
        raise DataError(f"{path}: 'labels' must be a list of integers; replace it with the official file")
    if len(y) != len(x):
        raise DataError(f"{path}: {len(y)} labels for {len(x)} images; replace it with the official file")

    if len(y) and not (0 <= y.min() and y.max() < len(CLASSES)):
        raise DataError(f"{path}: labels must lie in 0..{len(CLASSES) - 1}, found {y.min()}..{y.max()}; "
                        "replace it with the official file")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


# Official md5 of every batch file (torchvision's CIFAR10 lists the same; tests/test_data.py holds them together).
# Kept here so that a run need not import torchvision (~1.8 s) unless it has to download.
MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
       "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
       "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
       "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_cifar10(data_dir):
    """Return the path of cifar-10-batches-py under data_dir, downloading the archive on first use."""
    folder = os.path.join(data_dir, FOLDER)
    if not os.path.isdir(folder):
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive
        try:  # torchvision's downloader checks the archive's md5 before extracting it
            download_and_extract_archive(CIFAR10.url, data_dir, filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as e:
            raise DataError(
                f"CIFAR-10 not found in {os.path.abspath(folder)} and the download failed ({type(e).__name__}: {e}); "
                f"extract {CIFAR10.url} into {os.path.abspath(data_dir)}, or make a small offline copy with "
                f"`python scripts/make_fake_cifar.py --out {data_dir}`") from e
    missing = [f for f in TRAIN_FILES + TEST_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; extract the complete official archive there")
    # People point data_dir at their own copies, and the tests at synthetic ones: warn, don't refuse. A sweep
    # says it once for all its runs (QUIET_MD5 in the children's environment); each run records it as a tag.
    bad = checksums(data_dir)
    if bad and not os.environ.get(QUIET_MD5):
        warnings.warn(f"CIFAR-10 files in {folder} do not match the official md5: {', '.join(bad)}; using them as they are")
    return folder


QUIET_MD5 = "LRADVISOR_MD5_SAID"
_checked = {}


def checksums(data_dir):
    """The files of data_dir's cifar-10-batches-py whose md5 is not the official one (hashed once per process)."""
    folder = os.path.abspath(os.path.join(data_dir, FOLDER))
    if folder not in _checked:
        _checked[folder] = [name for name, md5 in MD5.items()
                            if os.path.isfile(os.path.join(folder, name)) and _md5(os.path.join(folder, name)) != md5]
    return _checked[folder]


def load_cifar10(data_dir):
    """Return (x_train, y_train, x_test, y_test) as uint8 NCHW and int64 numpy arrays."""
    folder = ensure_cifar10(data_dir)
    train = [_read_batch(os.path.join(folder, f)) for f in TRAIN_FILES]
    x_test, y_test = _read_batch(os.path.join(folder, TEST_FILES[0]))
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


def _per_class(labels, idx, fraction, rng):
    """A class-stratified draw from the indices `idx`: round(fraction x n) of each class's n (at least one)."""
    drawn = []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        drawn.append(rng.permutation(members)[:max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(drawn))


def stratified_subset(labels, ratio, seed):
    """Indices of a class-stratified, seed-determined `ratio` of the examples (at least one per class)."""
    if ratio >= 1:
        return np.arange(len(labels))
    return _per_class(labels, np.arange(len(labels)), ratio, np.random.default_rng(seed))


def holdout_split(labels, idx, fraction, seed):
    """Split the training indices `idx` into (train, validation): a class-stratified, seed-determined `fraction`
    of each class held out, at least one image per class, never overlapping. Its own random stream, so that
    the subset `idx` came from is the same with and without a holdout."""
    if fraction <= 0:
        return idx, idx[:0]
    val = _per_class(labels, idx, fraction, np.random.default_rng([seed, 1]))
    train = np.setdiff1d(idx, val, assume_unique=True)
    empty = sorted(set(labels[idx]) - set(labels[train]))
    if empty:
        c = empty[0]
        raise DataError(f"holdout {fraction:g} would leave class {CLASSES[c]} with no training image "
                        f"({np.sum(labels[idx] == c)} in the training set); lower holdout or raise subset_ratio")
    return train, val


# ----------------------------------------------------------------------------------------------------------
# Batches on the device

def normalize(x_uint8):
    """uint8 NCHW -> float normalised with the CIFAR-10 channel statistics."""
    mean = torch.tensor(MEAN, device=x_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float() / 255 - mean) / std


def augment(x_padded, generator, pad=4):
    """Random 32x32 crop of 4-pixel zero-padded images and a random horizontal flip, per image, as one
    gather over the whole batch (the same distribution as torchvision's RandomCrop(32, 4) + flip)."""
    n, c, hp, wp = x_padded.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = x_padded.device
    dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # a flip is reading the columns backwards
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + cols
    i = torch.arange(n, device=dev)[:, None, None, None]
    ch = torch.arange(c, device=dev)[None, :, None, None]
    return x_padded[i, ch, rows[:, None, :, None], cols[:, None, None, :]]


class Loader:
    """Shuffled, augmented, normalised batches of a uint8 dataset that already sits on `device`."""

    def __init__(self, x, y, batch_size, train, seed, channels_last=False, drop_last=False):
        self.x, self.y, self.batch_size, self.train = x, y, batch_size, train
        self.channels_last, self.drop_last = channels_last, drop_last
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
                xb, yb = augment(self.x_padded[idx], self.generator), self.y[idx]
            else:
                xb, yb = self.x[sl], self.y[sl]
            xb = normalize(xb)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb
