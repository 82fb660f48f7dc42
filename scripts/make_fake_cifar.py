"""Write a small synthetic CIFAR-10 in the real on-disk format (cifar-10-batches-py, python pickles).

Each class gets its own colour and stripe orientation plus noise, so a network can learn it in a few
epochs: enough to try the whole pipeline offline, and what the tests train on.

    python scripts/make_fake_cifar.py --out data --train-per-class 100 --test-per-class 20
"""

import argparse
import os
import pickle

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_images(n_per_class, rng):
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    data, labels = [], []
    for c in range(10):
        angle = np.pi * c / 10
        stripes = np.sin(2 * np.pi * 3 * (np.cos(angle) * xx + np.sin(angle) * yy))  # (32, 32)
        colour = 0.5 + 0.4 * np.array([np.cos(c), np.sin(1.7 * c), np.cos(2.3 * c + 1)])  # (3,)
        base = colour[:, None, None] + 0.25 * stripes[None]  # (3, 32, 32)
        imgs = base[None] + rng.normal(0, 0.15, (n_per_class, 3, 32, 32))
        data.append(np.clip(imgs * 255, 0, 255).astype(np.uint8).reshape(n_per_class, 3072))
        labels += [c] * n_per_class
    data, labels = np.concatenate(data), np.array(labels)
    order = rng.permutation(len(labels))
    return data[order], labels[order].tolist()


def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 pickles of dicts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data", help="data_dir to write cifar-10-batches-py into")
    p.add_argument("--train-per-class", type=int, default=100, help="training images per class (split over 5 batches)")
    p.add_argument("--test-per-class", type=int, default=20, help="test images per class")
    p.add_argument("--seed", type=int, default=0, help="random seed of the images")
    args = p.parse_args(argv)
    if args.train_per_class < 1 or args.test_per_class < 1:
        p.error("--train-per-class and --test-per-class must be at least 1")

    rng = np.random.default_rng(args.seed)
    folder = os.path.join(args.out, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    x, y = make_images(args.train_per_class, rng)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        dump(os.path.join(folder, f"data_batch_{i}"),
             {"batch_label": f"training batch {i} of 5", "labels": [y[j] for j in part], "data": x[part],
              "filenames": [f"fake_{j}.png" for j in part]})
    x, y = make_images(args.test_per_class, rng)
    dump(os.path.join(folder, "test_batch"),
         {"batch_label": "testing batch 1 of 1", "labels": y, "data": x,
          "filenames": [f"fake_test_{j}.png" for j in range(len(y))]})
    dump(os.path.join(folder, "batches.meta"),
         {"label_names": CLASSES, "num_cases_per_batch": len(y), "num_vis": 3072})
    print(f"wrote {10 * args.train_per_class} train and {len(y)} test images to {folder}")


if __name__ == "__main__":
    main()
