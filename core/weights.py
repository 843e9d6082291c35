"""The default weights shipped in resources/weights, per task.

Each file was trained by a script in scripts/ on the shared sample data (its
model card says on what, for how long, and with which scores);
resources/weights/README.md lists them with their provenance.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from .errors import RSLabError
from .resources import WEIGHTS_DIR


# task -> [(label shown to users, file name)], the default first.
SHIPPED: Dict[str, List[Tuple[str, str]]] = {
    "change_detection": [
        ("AR-CDNet, LEVIR-CD + DSIFN-CD samples (default)", "arcdnet_levir_dsifn.pt"),
        ("AR-CDNet compressed (quantised, for edge devices)", "arcdnet_levir_dsifn_compressed.pt"),
    ],
    "classification": [("CIFAR ResNet-20, CIFAR-10 subset (compression benchmark)", "resnet20_cifar_subset.pt")],
}


def shipped_checkpoints(task: str) -> List[Tuple[str, str]]:
    """(label, path) of the shipped checkpoints of `task` that are present, the default first."""
    return [(label, str(WEIGHTS_DIR / name)) for label, name in SHIPPED.get(task, []) if (WEIGHTS_DIR / name).is_file()]


def default_checkpoint(task: str) -> str:
    """Path of the default checkpoint of `task`, or RSLabError if none ships."""
    present = shipped_checkpoints(task)
    if not present:
        expected = ", ".join(name for _, name in SHIPPED.get(task, [])) or "none"
        raise RSLabError(
            f"no default weights for {task!r} in {WEIGHTS_DIR} (expected: {expected}); "
            "give a checkpoint, or retrain the defaults (see README)"
        )
    return present[0][1]
