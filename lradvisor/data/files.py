"""The data sets' files (registry.py says which): find or download CIFAR's python-format batches and read them
safely, or take scikit-learn's bundled digits; and the splits a run trains, validates and tests on. numpy only:
loader.py puts the arrays on the device and serves them.
"""

import hashlib
import os
import pickle
import warnings

import numpy as np

from lradvisor.data.registry import CLASSES, DIGITS_TEST, check_name
from lradvisor.errors import DataError


# ----------------------------------------------------------------------------------------------------------
# Reading the batch files


class _BatchUnpickler(pickle.Unpickler):
    """The batch files are pickles written by Python 2 numpy. They need numpy's array reconstructors and
    nothing else, so anything else (os.system, builtins.eval, ...) is refused: a crafted file in data_dir
    cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
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


def _read_batch(path, label_key="labels", n_classes=10):
    with open(path, "rb") as f:
        try:
            d = _BatchUnpickler(f, encoding="latin1").load()
        except Exception as e:
            raise DataError(f"cannot read {path}: {e}; replace it with the file from the official archive") from e
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise DataError(f"{path} is not a CIFAR batch (it has no 'data' and '{label_key}')")
    x, y = d["data"], d[label_key]
    # A wrong file would otherwise fail deep in a reshape, index out of range mid-run, or (labels fewer than
    # images) train misaligned and finish as if nothing were wrong.
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3 * 32 * 32):
        shape = getattr(x, "shape", None)
        raise DataError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')} {shape}; replace it with the official file"
        )
    if len(x) == 0:
        raise DataError(f"{path} is an empty batch (0 images); replace it with the official file")
    try:
        y = np.asarray(y)
        ok = y.ndim == 1 and np.issubdtype(y.dtype, np.integer)
    except Exception:
        ok = False
    if not ok:
        raise DataError(f"{path}: '{label_key}' must be a list of integers; replace it with the official file")
    if len(y) != len(x):
        raise DataError(f"{path}: {len(y)} labels for {len(x)} images; replace it with the official file")

    if len(y) and not (0 <= y.min() and y.max() < n_classes):
        raise DataError(
            f"{path}: labels must lie in 0..{n_classes - 1}, found {y.min()}..{y.max()}; "
            "replace it with the official file"
        )
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure(data_dir, name="cifar10"):
    """Return the folder of a CIFAR data set under data_dir, downloading its archive on first use."""
    files = check_name(name)["files"]
    folder = os.path.join(data_dir, files["folder"])
    if not os.path.isdir(folder):
        import torchvision.datasets
        from torchvision.datasets.utils import download_and_extract_archive

        tv = getattr(torchvision.datasets, files["torchvision"])
        try:  # torchvision's downloader checks the archive's md5 before extracting it
            download_and_extract_archive(tv.url, data_dir, filename=tv.filename, md5=tv.tgz_md5)
        except Exception as e:
            raise DataError(
                f"{name} not found in {os.path.abspath(folder)} and the download failed ({type(e).__name__}: {e}); "
                f"extract {tv.url} into {os.path.abspath(data_dir)}, make a small offline copy with "
                f"`python scripts/make_fake_cifar.py --dataset {name} --out {data_dir}`, or try --dataset digits "
                "(bundled, no download)"
            ) from e
    missing = [f for f in files["train"] + files["test"] if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; extract the complete official archive there")
    # People point data_dir at their own copies, and the tests at synthetic ones: warn, don't refuse. A sweep
    # says it once for all its runs (QUIET_MD5 in the children's environment); each run records it as a tag.
    bad = checksums(data_dir, name)
    if bad and not os.environ.get(QUIET_MD5):
        warnings.warn(
            f"{name} files in {folder} do not match the official md5: {', '.join(bad)}; using them as they are"
        )
    return folder


QUIET_MD5 = "LRADVISOR_MD5_SAID"
_checked = {}


def checksums(data_dir, name="cifar10"):
    """The files of a CIFAR data set's folder whose md5 is not the official one (hashed once per process); []
    for a bundled data set."""
    files = check_name(name)["files"]
    if files is None:
        return []
    folder = os.path.abspath(os.path.join(data_dir, files["folder"]))
    if folder not in _checked:
        _checked[folder] = [
            f
            for f, md5 in files["md5"].items()
            if os.path.isfile(os.path.join(folder, f)) and _md5(os.path.join(folder, f)) != md5
        ]
    return _checked[folder]


def load(data_dir, name="cifar10"):
    """Return (x_train, y_train, x_test, y_test) of a data set as uint8 N x 3 x 32 x 32 and int64 numpy arrays."""
    ds = check_name(name)
    if ds["files"] is None:
        return load_digits()
    files, n = ds["files"], len(ds["classes"])
    folder = ensure(data_dir, name)
    train = [_read_batch(os.path.join(folder, f), files["labels"], n) for f in files["train"]]
    test = [_read_batch(os.path.join(folder, f), files["labels"], n) for f in files["test"]]
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        np.concatenate([x for x, _ in test]),
        np.concatenate([y for _, y in test]),
    )


def load_digits():
    """scikit-learn's bundled digits (1,797 real 8x8 images, values 0..16) as 32 x 32 x 3 uint8: each pixel
    scaled to 0..255 and repeated 4 x 4 (nearest neighbour, so nothing is invented), grey in all three
    channels; split by digits_split. No download, ever."""
    import gzip
    import importlib.util

    # The file sklearn.datasets.load_digits reads, read as it reads it (np.loadtxt, float64) but without importing
    # scikit-learn: that import cost 1.5 s of every run's start on digits (2026-12-03, 2 cores).
    (package,) = importlib.util.find_spec("sklearn").submodule_search_locations
    with gzip.open(os.path.join(package, "datasets", "data", "digits.csv.gz"), "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    x = np.round(images * (255 / 16)).astype(np.uint8)
    x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)  # 8x8 -> 32x32
    x = np.repeat(x[:, None], 3, axis=1)  # grey -> 3 channels
    y = target.astype(np.int64)
    train, test = digits_split(y)
    return x[train], y[train], x[test], y[test]


def digits_split(labels):
    """A fixed, class-stratified split: DIGITS_TEST of each class for the test set, drawn once with a fixed seed
    (not the run's: every run is scored on the same test images). Returns (train, test) indices."""
    test = _per_class(labels, np.arange(len(labels)), DIGITS_TEST, np.random.default_rng(1797))
    return np.setdiff1d(np.arange(len(labels)), test, assume_unique=True), test


def _per_class(labels, idx, fraction, rng):
    """A class-stratified draw from the indices `idx`: round(fraction x n) of each class's n (at least one)."""
    drawn = []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        drawn.append(rng.permutation(members)[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(drawn))


def stratified_subset(labels, ratio, seed):
    """Indices of a class-stratified, seed-determined `ratio` of the examples (at least one per class)."""
    if ratio >= 1:
        return np.arange(len(labels))
    return _per_class(labels, np.arange(len(labels)), ratio, np.random.default_rng(seed))


def holdout_split(labels, idx, fraction, seed, classes=CLASSES):
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
        raise DataError(
            f"holdout {fraction:g} would leave class {classes[c]} with no training image "
            f"({np.sum(labels[idx] == c)} in the training set); lower holdout or raise subset_ratio"
        )
    return train, val
