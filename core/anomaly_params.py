"""What an anomaly detection run is asked to do: the method and its parameters, checked on construction.

One place for the methods' names and for which parameter each method reads,
so the dock, the Processing algorithm and the report agree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

from .errors import RSLabError

METHODS = ("bsdm_rx", "rx", "lrx")
METHOD_LABELS = {"bsdm_rx": "BSDM + RX", "rx": "RX", "lrx": "Local RX"}  # as the dock and Processing show them
PRECISIONS = ("auto", "float32", "bfloat16")
LRX_MAX_OUTER = 255  # local RX's widest outer window: its tiles of 512 x 512 hold ~300 MB of local covariances


def check_false_alarm_rate(rate: float) -> None:
    """RSLabError for a false-alarm rate outside (0, 1)."""
    if not 0 < rate < 1:
        raise RSLabError(f"the false-alarm rate must be above 0 and below 1, got {rate}")


@dataclass(frozen=True)
class AnomalyParams:
    method: str = "bsdm_rx"
    iterations: int = 500
    seed: int = 0
    inner_window: int = 3
    outer_window: int = 11
    false_alarm_rate: Optional[float] = None
    max_train_pixels: int = 20000
    rounds: int = 10
    device: str = "auto"
    model: Optional[str] = None  # a BSDM denoiser checkpoint to use instead of training one on the scene
    precision: str = "auto"  # BSDM training: "auto" (bfloat16 where native), "float32" or "bfloat16"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RSLabError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.iterations < 1:
            raise RSLabError(f"BSDM needs at least one training iteration, got {self.iterations}")
        for name in ("inner", "outer"):  # said as people (and the dock) name them, not by the field's name
            value = getattr(self, f"{name}_window")
            if value < 1 or value % 2 == 0:
                raise RSLabError(f"the {name} window must be an odd number of pixels, got {value}")
        if self.outer_window > LRX_MAX_OUTER:
            raise RSLabError(f"the outer window can be at most {LRX_MAX_OUTER} pixels, got {self.outer_window} (for "
                             "a background that wide, global RX is the detector)")
        if self.outer_window <= self.inner_window:
            raise RSLabError(
                f"the outer window ({self.outer_window}) must be larger than the inner window ({self.inner_window})"
            )
        if self.false_alarm_rate is not None:
            check_false_alarm_rate(self.false_alarm_rate)
        if self.model and self.method != "bsdm_rx":
            raise RSLabError(f"a denoiser checkpoint is only used by bsdm_rx, not by {self.method}")
        if self.precision not in PRECISIONS:
            raise RSLabError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_train_pixels < 100:
            raise RSLabError(f"BSDM needs at least 100 training pixels, got {self.max_train_pixels}")


# the parameters each method reads (the rest were reported too, as if a plain RX had run 500 iterations)
METHOD_PARAMS = {
    "bsdm_rx": ("iterations", "seed", "max_train_pixels", "rounds", "device", "model", "precision"),
    "rx": (),
    "lrx": ("inner_window", "outer_window"),
}
TRAINING_PARAMS = ("iterations", "seed", "max_train_pixels", "precision")  # unread when a denoiser is given


def used_params(params: AnomalyParams) -> Dict[str, Any]:
    """The parameters `params.method` reads (and the method and false-alarm rate), for reports."""
    read = set(METHOD_PARAMS[params.method]) - (set(TRAINING_PARAMS) if params.model else set())
    return {key: value for key, value in asdict(params).items()
            if key in ("method", "false_alarm_rate") or key in read}

