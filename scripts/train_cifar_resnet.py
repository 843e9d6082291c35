"""Train the CIFAR ResNet baseline that the compression benchmark compresses.

Writes resources/weights/resnet20_cifar_subset.pt: ResNet-20 (option-A
shortcuts, 0.27 M parameters) trained from scratch on the shared CIFAR-10
subset (5000 training images; its 2000 test images are the evaluation set).
ResNet-20 rather than the paper's ResNet-56: three times cheaper to train and
compress on a 2-core CPU, same family and same compression pipeline.

    .venv/bin/python scripts/train_cifar_resnet.py [--epochs 40] [--depth 20]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from rslab.core.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from rslab.core.compression_tasks import ClassificationTask
from rslab.models.resnet_cifar import ResNetCifar

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_subset.npz"
OUTPUT = ROOT / "resources" / "weights" / "resnet20_cifar_subset.pt"
# CIFAR-10 channel statistics in 0..255 units.
MEAN = [125.31, 122.95, 113.87]
STD = [62.99, 62.09, 66.70]


def card_for(depth: int, classes, training: dict, metrics: dict) -> ModelCard:
    return ModelCard(
        task="classification", architecture="resnet_cifar",
        arguments={"depth": depth, "num_classes": len(classes), "bands": 3},
        bands=["red", "green", "blue"], normalisation={"mean": MEAN, "std": STD},
        class_names=list(classes), training=training, metrics=metrics,
        description=f"CIFAR ResNet-{depth} (option-A shortcuts), compression benchmark model (RS Lab)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--output", default=str(OUTPUT))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = [str(c) for c in np.load(DATA)["classes"]]
    model = ResNetCifar(args.depth, len(classes))
    # the adapter needs a checkpoint for its normalisation: write the untrained model's card first
    scratch = Path(args.output).with_suffix(".init.pt")
    save_checkpoint(str(scratch), model.state_dict(), card_for(args.depth, classes, {}, {}))
    task = ClassificationTask(load_checkpoint(str(scratch)), str(DATA), seed=0)
    scratch.unlink()
    steps_per_epoch = math.ceil(len(task.x_train) / args.batch)
    total = args.epochs * steps_per_epoch
    optimiser = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=total, pct_start=0.15)
    t0 = time.time()
    history = []
    model.train()
    for epoch in range(args.epochs):
        losses = []
        for _ in range(steps_per_epoch):
            loss = task.loss(model, task.batch(args.batch))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            scores = task.evaluate(model)
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **scores})
            print(f"[{time.time() - t0:6.0f} s] epoch {epoch + 1}: loss {np.mean(losses):.3f}, "
                  f"test accuracy {scores['accuracy']:.2f} %", flush=True)
    scores = task.evaluate(model)
    training = {"data": "CIFAR-10 subset (../shared/data/cifar10/cifar10_subset.npz): 5000 training images; "
                        "scored on its 2000 test images",
                "params": {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "optimiser": "SGD nesterov 0.9, wd 5e-4, one-cycle"},
                "seconds": round(time.time() - t0), "device": "cpu", "date": _dt.date.today().isoformat(),
                "history": history}
    save_checkpoint(args.output, model.state_dict(), card_for(args.depth, classes, training, {"test": scores}))
    print(json.dumps({"checkpoint": args.output, **scores, "seconds": round(time.time() - t0)}, indent=1))


if __name__ == "__main__":
    main()
