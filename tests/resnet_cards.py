"""The CIFAR ResNet the compression tests share: the shipped ResNet-20's own card (bands, normalisation, class
names) for a model of any depth, and an untrained ResNet saved under it (the machinery, not accuracy, under
test; tests/test_pic_pq.py scores the shipped weights themselves)."""
from __future__ import annotations

from pathlib import Path

import torch

from rslab.core.checkpoint import ModelCard, read_card, save_checkpoint
from rslab.models.resnet_cifar import ResNetCifar

SHIPPED_RESNET = Path(__file__).resolve().parent.parent / "resources" / "weights" / "resnet20_cifar_subset.pt"


def resnet_card(depth: int = 20, **extra) -> ModelCard:
    shipped = read_card(str(SHIPPED_RESNET))
    return ModelCard(task="classification", architecture="resnet_cifar",
                     arguments={"depth": depth, "num_classes": 10, "bands": 3}, bands=list(shipped.bands),
                     normalisation=dict(shipped.normalisation), class_names=list(shipped.class_names), **extra)


def untrained_resnet(path: Path, depth: int = 20) -> str:
    """A ResNet of `depth` with torch's initial weights under seed 0, saved as an RS Lab checkpoint at `path`."""
    torch.manual_seed(0)
    save_checkpoint(str(path), ResNetCifar(depth).state_dict(), resnet_card(depth))
    return str(path)
