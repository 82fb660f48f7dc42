"""Write a small synthetic CIFAR-10 or CIFAR-100 in the real on-disk format (python pickles):
cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, or cifar-100-python/{train,test,meta} with
fine_labels (the 100 real class names in meta) and coarse_labels (here simply fine // 5).

Each class gets its own colour and stripe orientation plus noise, so a network can learn it in a few
epochs: enough to test the file formats and the pipeline offline. For real images offline, use
`--dataset digits` (scikit-learn's bundled digits) instead.

    python scripts/make_fake_cifar.py --out data --train-per-class 100 --test-per-class 20
    python scripts/make_fake_cifar.py --dataset cifar100 --out data --train-per-class 5 --test-per-class 2
"""

import argparse
import os
import pickle

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COARSE = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
]


def make_images(n_per_class, rng, n_classes=10):
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    data, labels = [], []
    for c in range(n_classes):
        angle = np.pi * (c % 10) / 10  # CIFAR-100: ten orientations x ten colours (and stripe widths)
        waves = 3 + (c // 10) % 5
        stripes = np.sin(2 * np.pi * waves * (np.cos(angle) * xx + np.sin(angle) * yy))  # (32, 32)
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
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"], help="which format to write")
    p.add_argument("--out", default="data", help="data_dir to write cifar-10-batches-py (cifar-100-python) into")
    p.add_argument("--train-per-class", type=int, default=100, help="training images per class (split over 5 batches)")
    p.add_argument("--test-per-class", type=int, default=20, help="test images per class")
    p.add_argument("--seed", type=int, default=0, help="random seed of the images")
    args = p.parse_args(argv)
    if args.train_per_class < 1 or args.test_per_class < 1:
        p.error("--train-per-class and --test-per-class must be at least 1")

    rng = np.random.default_rng(args.seed)
    if args.dataset == "cifar100":
        return cifar100(args, rng)
    folder = os.path.join(args.out, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    x, y = make_images(args.train_per_class, rng)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        dump(
            os.path.join(folder, f"data_batch_{i}"),
            {
                "batch_label": f"training batch {i} of 5",
                "labels": [y[j] for j in part],
                "data": x[part],
                "filenames": [f"fake_{j}.png" for j in part],
            },
        )
    x, y = make_images(args.test_per_class, rng)
    dump(
        os.path.join(folder, "test_batch"),
        {
            "batch_label": "testing batch 1 of 1",
            "labels": y,
            "data": x,
            "filenames": [f"fake_test_{j}.png" for j in range(len(y))],
        },
    )
    dump(os.path.join(folder, "batches.meta"), {"label_names": CLASSES, "num_cases_per_batch": len(y), "num_vis": 3072})
    print(f"wrote {10 * args.train_per_class} train and {len(y)} test images to {folder}")


def cifar100(args, rng):
    from lradvisor.data.registry import CIFAR100_CLASSES

    folder = os.path.join(args.out, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for part, n in (("train", args.train_per_class), ("test", args.test_per_class)):
        x, y = make_images(n, rng, 100)
        dump(
            os.path.join(folder, part),
            {
                "filenames": [f"fake_{part}_{j}.png" for j in range(len(y))],
                "batch_label": f"{part}ing batch 1 of 1",
                "fine_labels": y,
                "coarse_labels": [c // 5 for c in y],
                "data": x,
            },
        )
    dump(os.path.join(folder, "meta"), {"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": COARSE})
    print(f"wrote {100 * args.train_per_class} train and {100 * args.test_per_class} test images to {folder}")


if __name__ == "__main__":
    main()
