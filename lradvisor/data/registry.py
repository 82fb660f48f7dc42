"""The data sets, as data (like ARMS): adding one is one entry of DATASETS. Imports nothing heavy, so that
the CLI can check a `dataset` parameter in a fraction of a second; files.py reads them, loader.py serves them."""

from lradvisor.errors import UsageError

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
# Standard CIFAR-10 per-channel statistics (of the training set), as most CIFAR code uses.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# CIFAR-100's fine labels, in the order of its meta file's fine_label_names (label i is name i).
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split()
)

# Official md5 of every batch file (torchvision's CIFAR10 lists the same; tests/test_data.py holds them together).
# Kept here so that a run need not import torchvision (~1.8 s) unless it has to download.
MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
MD5_100 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}

# What a data set is. Every image is served as 3 x 32 x 32 uint8, so every model runs on every data set.
#   classes   names, label i = classes[i]: the model's outputs, class_acc/<name>, the prompts
#   mean/std  per-channel statistics of its training images (normalisation)
#   flip      random horizontal flips in training (not for digits: a mirrored 2, 3 or 7 is another glyph)
#   files     CIFAR: folder under data_dir, training and test files, the labels' key, official md5s, and the
#             torchvision class whose url and archive md5 the download uses; None: bundled, never downloaded
#   tried     settings it is best tried with, beyond the published defaults (README): a run given others says so
#             once, and trains with what it was given (its params are what it trained with)
DATASETS = {
    "cifar10": {
        "classes": CLASSES,
        "mean": MEAN,
        "std": STD,
        "flip": True,
        "files": {
            "folder": FOLDER,
            "train": [f"data_batch_{i}" for i in range(1, 6)],
            "test": ["test_batch"],
            "labels": "labels",
            "md5": MD5,
            "torchvision": "CIFAR10",
        },
        "tried": {},
    },
    "cifar100": {
        "classes": CIFAR100_CLASSES,
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
        "flip": True,
        "files": {
            "folder": "cifar-100-python",
            "train": ["train"],
            "test": ["test"],
            "labels": "fine_labels",
            "md5": MD5_100,
            "torchvision": "CIFAR100",
        },
        "tried": {},
    },
    # 1,797 real 8x8 grey digits bundled with scikit-learn, in a fixed split (digits_split); its statistics are
    # those of that training split (tests/test_data.py recomputes them).
    "digits": {
        "classes": tuple("0123456789"),
        "mean": (0.3049,) * 3,
        "std": (0.3757,) * 3,
        "flip": False,
        "files": None,
        # measured: lr 0.1 / batch 32 reached 29 % in 3 epochs, lr 0.02 / batch 16 96 %
        "tried": {"lr": 0.02, "batch_size": 16},
    },
}
DIGITS_TEST = 0.2  # the digits test split: a fixed 20 % of each class


def check_name(name):
    """The entry of a data set, or UsageError naming the valid ones."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]
