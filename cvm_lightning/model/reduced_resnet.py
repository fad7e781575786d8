"""The reduced ResNet-18 of continual-learning papers (GEM, A-GEM, ER), for small images.

Lopez-Paz & Ranzato (2017): a ResNet-18 with a 3x3 stride-1 stem, no
max-pool and 20 base filters (widths 20, 40, 80, 160), about 1.1M
parameters. A 32x32 image keeps a 4x4 map before pooling, where timm's
stock stems (stride 4 or more) leave 1x1; prefer it for 32x32 and 64x64
inputs trained from scratch.

It is registered with timm: ``timm.create_model("reduced_resnet18")`` builds
it, ``num_classes=0`` (as this package asks) gives pooled features. Its
full-width sibling ``cifar_resnet18`` (``nf=64``: widths 64 to 512, about
11.2M parameters) is the CIFAR ResNet-18 of DER and Mammoth.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """Pooled features of width ``8 * nf`` (160 for ``nf=20``), then a linear classifier unless ``num_classes=0``."""

    def __init__(self, in_chans: int = 3, nf: int = 20, num_classes: int = 0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, nf, 3, 1, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU())
        layers, in_planes = [], nf
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            layers += [BasicBlock(in_planes, nf * mult, stride), BasicBlock(nf * mult, nf * mult, 1)]
            in_planes = nf * mult
        self.layers = nn.Sequential(*layers)
        self.num_features = in_planes
        self.num_classes = num_classes
        self.fc = nn.Linear(in_planes, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        # avg_pool2d over the whole map, as the reference networks pool: x.mean rounds otherwise, and one
        # ulp is enough for two runs of the same SGD (batch 10, lr 0.1) to part within a few steps.
        return self.fc(nn.functional.avg_pool2d(features, features.shape[-2:]).flatten(1))


def _from_scratch(name: str, nf: int, pretrained: bool, in_chans: int, num_classes: int) -> ReducedResNet18:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; it is trained from scratch.")
    return ReducedResNet18(in_chans=in_chans, nf=nf, num_classes=num_classes)


@register_model
def reduced_resnet18(pretrained: bool = False, in_chans: int = 3, num_classes: int = 1000, **kwargs) -> ReducedResNet18:
    """timm entry point: 20 base filters (GEM, A-GEM, ER, Avalanche's SlimResNet18); no pretrained weights."""
    return _from_scratch("reduced_resnet18", 20, pretrained, in_chans, num_classes)


@register_model
def cifar_resnet18(pretrained: bool = False, in_chans: int = 3, num_classes: int = 1000, **kwargs) -> ReducedResNet18:
    """timm entry point: 64 base filters (DER, Mammoth's seq-CIFAR-10); no pretrained weights."""
    return _from_scratch("cifar_resnet18", 64, pretrained, in_chans, num_classes)
