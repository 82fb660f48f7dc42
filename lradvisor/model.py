"""The network: torchvision's ResNet-18, with the stem the published CIFAR-10 experiment used."""

import torch.nn as nn
import torchvision

MODELS = ("resnet18", "resnet18_imagenet_stem")


def build_model(name, num_classes=10):
    model = torchvision.models.resnet18(num_classes=num_classes)
    if name == "resnet18":
        # 32x32 inputs: a 7x7 stride-2 conv plus max-pool would shrink them to 8x8 before the first block,
        # so the CIFAR variant uses a 3x3 stride-1 first conv and no max-pool.
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif name != "resnet18_imagenet_stem":
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return model
