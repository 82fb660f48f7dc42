"""The CIFAR-10 reader and the on-device loader, against the real file format and torchvision references."""

import hashlib
import http.server
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from torchvision.datasets import CIFAR10

from lradvisor.data import files, registry
from lradvisor.data import loader as batches
from lradvisor.data.registry import FOLDER, MD5
from lradvisor.errors import DataError

from conftest import ROOT, cli, runs_of


def test_reads_real_format(cifar_dir):
    x_tr, y_tr, x_te, y_te = files.load(cifar_dir)
    assert x_tr.shape == (80, 3, 32, 32) and x_tr.dtype == np.uint8
    assert x_te.shape == (40, 3, 32, 32) and sorted(set(y_tr.tolist())) == list(range(10))
    # Same bytes as a plain pickle.load of the file (the reader only restricts what may be loaded).
    with open(os.path.join(cifar_dir, FOLDER, "test_batch"), "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert np.array_equal(x_te.reshape(40, -1), raw["data"]) and y_te.tolist() == raw["labels"]


def test_checksum_mismatch_is_a_warning_naming_the_file(cifar_dir):
    with pytest.warns(UserWarning, match="data_batch_1"):
        files.ensure(cifar_dir)


def test_crafted_pickle_cannot_run_code(cifar_dir, tmp_path):
    shutil.copytree(cifar_dir, tmp_path, dirs_exist_ok=True)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / FOLDER / "data_batch_3", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load.*system"):
        files.load(str(tmp_path))
    assert not marker.exists()


def test_missing_data_is_one_clear_line(tmp_path, capsys, tracking_uri):
    # No network to the CIFAR host here: the real torchvision download fails and we say what to do.
    assert cli("train", "--data-dir", tmp_path, "--epochs", 1, "--experiment", "missing_data") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar10 not found in" in err[0] and "make_fake_cifar.py" in err[0]
    assert "--dataset digits" in err[0]  # the offline way to real images
    assert runs_of("missing_data") == []


def _serve(folder):
    def handler(*a):
        return http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow  # starts a process
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_downloads_and_verifies_archive_on_first_use(name, tmp_path, monkeypatch):
    """The real torchvision download path, from a local HTTP server holding an archive in the real layout."""
    import torchvision.datasets

    tv = getattr(torchvision.datasets, registry.DATASETS[name]["files"]["torchvision"])
    folder = registry.DATASETS[name]["files"]["folder"]
    made = tmp_path / "made"
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "make_fake_cifar.py"),
            "--dataset",
            name,
            "--out",
            str(made),
            "--train-per-class",
            "2",
            "--test-per-class",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / tv.filename, "w:gz") as tar:
        tar.add(made / folder, arcname=folder)
    md5 = hashlib.md5((served / tv.filename).read_bytes()).hexdigest()
    server = _serve(served)
    try:
        monkeypatch.setattr(tv, "url", f"http://127.0.0.1:{server.server_port}/{tv.filename}")
        monkeypatch.setattr(tv, "tgz_md5", "0" * 32)  # a corrupt download is refused ...
        with pytest.raises(DataError, match="download failed"):
            files.ensure(str(tmp_path / "bad"), name)
        monkeypatch.setattr(tv, "tgz_md5", md5)  # ... a good one is extracted and read
        n = len(registry.DATASETS[name]["classes"])
        with pytest.warns(UserWarning, match=f"{name} files in .* do not match the official md5"):
            x_tr, y_tr, x_te, y_te = files.load(str(tmp_path / "good"), name)
        assert x_tr.shape == (2 * n, 3, 32, 32) and sorted(set(y_tr.tolist())) == list(range(n)) and len(y_te) == n
    finally:
        server.shutdown()


def test_stratified_subset():
    labels = np.repeat(np.arange(10), 50)
    a = files.stratified_subset(labels, 0.2, seed=3)
    assert np.bincount(labels[a]).tolist() == [10] * 10
    assert np.array_equal(a, files.stratified_subset(labels, 0.2, seed=3))
    assert not np.array_equal(a, files.stratified_subset(labels, 0.2, seed=4))
    assert len(files.stratified_subset(labels, 1.0, seed=0)) == 500


def test_batch_augmentation_matches_torchvision_reference():
    """Every augmented image is exactly one of the 81 crops x 2 flips torchvision's RandomCrop(32, 4) +
    RandomHorizontalFlip can produce, and the offsets and flips are spread like theirs."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = batches.augment(torch.nn.functional.pad(x, (4, 4, 4, 4)), g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = T.Pad(4)(x)
    found = []
    for i in range(len(x)):
        crops = {(dy, dx): T.functional.crop(padded[i], dy, dx, 32, 32) for dy in range(9) for dx in range(9)}
        cands = [
            (dy, dx, f)
            for (dy, dx), c in crops.items()
            for f in (0, 1)
            if torch.equal(out[i], T.functional.horizontal_flip(c) if f else c)
        ]
        assert cands, f"image {i} is no crop/flip of its input"
        found.append(cands[0])
    flips = sum(f for _, _, f in found)
    assert 16 < flips < 48  # Binomial(64, 0.5)
    assert 2.5 < np.mean([dy for dy, _, _ in found]) < 5.5  # uniform on 0..8 has mean 4
    # Normalisation equals torchvision's ToDtype + Normalize.
    ref = T.Normalize(registry.MEAN, registry.STD)(T.ToDtype(torch.float32, scale=True)(x))
    assert torch.allclose(batches.normalize(x), ref, atol=1e-5)


def test_loader_covers_each_image_once_per_epoch():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 32, 32).contiguous()
    y = torch.arange(10)
    loader = batches.Loader(x, y, batch_size=4, train=True, seed=0)
    seen = torch.cat([yb for _, yb in loader])
    assert sorted(seen.tolist()) == list(range(10)) and len(loader) == 3
    again = torch.cat([yb for _, yb in batches.Loader(x, y, batch_size=4, train=True, seed=0)])
    assert torch.equal(seen, again)


def test_md5_list_and_model_equal_torchvision():
    """Our copies of what we no longer import from torchvision on every run: its CIFAR-10 checksums, and its
    resnet18 (same seed, same weights bit for bit, same outputs), with the CIFAR stem swapped in as before."""
    import torchvision

    from lradvisor.engine.network import build_model

    assert MD5 == dict(CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])])
    for name in ("resnet18", "resnet18_imagenet_stem"):
        torch.manual_seed(3)
        ours = build_model(name)
        torch.manual_seed(3)
        ref = torchvision.models.resnet18(num_classes=10)
        if name == "resnet18":
            ref.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            ref.maxpool = torch.nn.Identity()
        a, b = ours.state_dict(), ref.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(ours.eval()(x), ref.eval()(x))


def test_width_scales_every_stage_and_64_is_the_published_network():
    """Width w: stages of w, 2w, 4w and 8w channels (the stem's conv makes w), so a quarter of the width is ~1/16 of
    the weights; 64 builds ResNet-18 itself, weight for weight (the test above holds that to torchvision)."""
    from lradvisor.engine.network import build_model

    for name in ("resnet18", "resnet18_imagenet_stem"):
        torch.manual_seed(3)
        default = build_model(name).state_dict()
        torch.manual_seed(3)
        same = build_model(name, 10, 64).state_dict()
        assert list(default) == list(same) and all(torch.equal(default[k], same[k]) for k in default)
        narrow = build_model(name, 10, 16)
        assert narrow.conv1.out_channels == 16 and narrow.fc.in_features == 128
        assert [narrow.get_submodule(f"layer{i}")[1].conv2.out_channels for i in (1, 2, 3, 4)] == [16, 32, 64, 128]
        n_narrow, n_full = (sum(p.numel() for p in m.parameters()) for m in (narrow, build_model(name)))
        assert 14 < n_full / n_narrow < 17, (n_full, n_narrow)
        assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_run_does_not_import_torchvision(cifar_dir, tmp_path):
    code = (
        "import sys; from lradvisor.cli import main; "
        f"code = main(['train', '--data-dir', {str(cifar_dir)!r}, '--epochs', '1', '--batch-size', '20', "
        "'--subset-ratio', '0.25', '--experiment', 'imports']); "
        "assert code == 0; print('torchvision' in sys.modules)"
    )
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "False", p.stdout + p.stderr
