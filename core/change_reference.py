"""How a change reference raster's values read: changed, unchanged or not labelled.

Two codings are in use for change references:

- ``binary``: 0 = no change, any other value = change (LEVIR-CD, OSCD as
  shipped here, most masks drawn by hand);
- ``partial``: 0 = not labelled, 1 = no change, 2 = change. References drawn
  for only part of a scene use it (the Landsat Nanjing pair in
  ../shared/data/change/landsat_nanjing labels 14,756 of its 640,000 pixels).

The same codings read the label rasters of training pairs: unlabelled pixels
are left out of the loss and of the validation scores, like nodata.

Read as binary, a partial reference turns every labelled pixel into "change"
and every unlabelled one into "no change", so the scores mean nothing (CVA on
Nanjing: F1 0.046 read as binary, 0.757 read as partial). The reference's
values are therefore surveyed before any work: a partial reference with other
values stops with a clear error, and a reference read as binary that holds
exactly 0, 1 and 2 gets a note pointing to the partial coding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Set, Tuple

import numpy as np

from .errors import RSLabError
from .job import JobMonitor
from .raster_io import gdal_env, open_raster, read_label_window
from .tiling import windows_for

CODINGS: Dict[str, str] = {
    "binary": "0 = no change, non-zero = change",
    "partial": "0 = not labelled, 1 = no change, 2 = change",
}
# the codings' short names, in order, for Processing's enum options and the docks' combos: short, so the algorithm
# dialog needs no sideways scrolling at QGIS's default size (its help panel, the combos' tooltips give them in full)
CODING_LABELS = ["binary (0 = no change)", "partial (0 = not labelled)"]
PARTIAL_VALUES = (0, 1, 2)


def check_coding(coding: str) -> None:
    if coding not in CODINGS:
        raise RSLabError(f"the reference coding must be one of {', '.join(CODINGS)}, got {coding!r}")


def reference_labels(values: np.ndarray, coding: str) -> Tuple[np.ndarray, np.ndarray]:
    """(changed, labelled) boolean arrays for reference values read under `coding`."""
    if coding == "partial":
        return values == 2, values != 0
    check_coding(coding)
    return values != 0, np.ones(values.shape, bool)


def read_reference(ds: Any, window: Any, coding: str) -> Tuple[np.ndarray, np.ndarray]:
    """(changed, labelled) of one window of an open reference or label raster read under `coding`.

    Its nodata pixels are not labelled, except 0 where only a nodata value of 0 masks it (see
    raster_io.read_label_window: it must not hide every unchanged pixel), and pixels outside a reference
    resampled from another grid are not labelled either. The one reading for scoring, training and validation.
    """
    values, valid = read_label_window(ds, window)
    changed, labelled = reference_labels(values, coding)
    return changed, labelled & valid


@dataclass
class ReferenceValues:
    """Which of 0, 1 and 2 a reference's valid pixels hold, and one other value if there is any."""

    present: Set[int] = field(default_factory=set)
    other: Optional[float] = None

    def update(self, values: np.ndarray) -> None:
        for v in PARTIAL_VALUES:
            if v not in self.present and np.any(values == v):
                self.present.add(v)
        if self.other is None:
            odd = values[(values != 0) & (values != 1) & (values != 2)]
            if odd.size:
                self.other = float(odd[0])


def survey_reference(path: str, monitor: Optional[JobMonitor] = None, tile: int = 1024,
                     seen: Optional[ReferenceValues] = None, what: str = "reference") -> ReferenceValues:
    """The values of a one-band reference (or `what`: "labels") raster's valid pixels, by windows (added to
    `seen` when given)."""
    monitor = monitor or JobMonitor()
    seen = seen if seen is not None else ReferenceValues()
    with gdal_env(), open_raster(path) as ds:
        windows = windows_for(ds, tile)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), f"reading the {what}")
            values, valid = read_label_window(ds, window)
            seen.update(values[valid])
    return seen


def coding_note(seen: ReferenceValues, coding: str, what: str = "reference") -> Optional[str]:
    """RSLabError when `coding` cannot read these values; a note when the coding looks like the wrong one.

    `what` names the rasters in the messages ("reference", "training labels").
    """
    check_coding(coding)
    if coding == "partial":
        if seen.other is not None:
            raise RSLabError(
                f"the value {seen.other:g} in the {what} is not one of the partial coding's ({CODINGS['partial']}): "
                "choose the binary coding or recode the rasters")
        if not seen.present & {1, 2}:
            raise RSLabError(f"no pixel of the {what} is labelled (1 = no change, 2 = change) under the partial "
                             "coding: choose the binary coding, or other rasters")
        if 2 not in seen.present:  # a 0/1 mask: its changes (1) read as 'no change', the rest as 'not labelled'
            values = " and ".join(str(v) for v in sorted(seen.present))
            return (f"the values of the {what} are {values} only, read as partial (0 = not labelled, 1 = no change): "
                    "no pixel is labelled as change; if 1 means change, choose the binary coding")
        return None
    if seen.other is None and {1, 2} <= seen.present:
        return (f"the values of the {what} are 0, 1 and 2, read as binary (0 = no change, non-zero = change); "
                "if 0 means not labelled, 1 no change and 2 change, choose the partial coding")
    return None
