"""The LEVIR-CD pairs of the shared data (../shared/data/change/levir_cd_256: A = before, B = after, label), which
the change-detection tests read."""
from __future__ import annotations

from pathlib import Path

from rslab.core.change_data import ChangePair

LEVIR = Path("change") / "levir_cd_256"


def levir_pair(shared_data: Path, name: str) -> ChangePair:
    """The pair NAME (a file name such as test_2_0000_0000.png) of the shared LEVIR-CD folder."""
    root = shared_data / LEVIR
    return ChangePair(str(root / "A" / name), str(root / "B" / name), str(root / "label" / name))
