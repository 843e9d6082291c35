"""One checkpoint format for every task: weights plus a model card.

A checkpoint is a file written by `torch.save` holding only plain data::

    {"format": "rslab-checkpoint", "version": 1,
     "card": "<model card as JSON text>", "state_dict": {name: tensor}}

and it is read with `torch.load(..., weights_only=True)`, which refuses
pickled code: a checkpoint from a stranger cannot run anything on open
(`read_card` reads the card alone without torch, allowing even less). The
model card names the architecture (looked up in models.registry, never
imported from the file) and its constructor arguments, the input bands and
their normalisation, class names, training data and metrics, and bit widths
where the model is quantised.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .bops import FULL_PRECISION
from .errors import RSLabError
from .outputs import PendingOutputs, write_bytes

FORMAT = "rslab-checkpoint"
VERSION = 1


@dataclass
class ModelCard:
    """Everything needed to rebuild, feed and judge a model, without its weights."""

    task: str
    architecture: str
    arguments: Dict[str, Any] = field(default_factory=dict)
    bands: List[str] = field(default_factory=list)
    normalisation: Dict[str, List[float]] = field(default_factory=dict)
    class_names: List[str] = field(default_factory=list)
    training: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    bit_widths: Optional[Dict[str, Dict[str, int]]] = None
    description: str = ""
    created: str = ""

    def __post_init__(self) -> None:
        self._check_types()
        if not self.task:
            raise RSLabError("a model card needs a task")
        if not self.architecture:
            raise RSLabError("a model card needs an architecture name")
        if self.normalisation:
            lengths = {len(v) for v in self.normalisation.values()}
            if self.bands and lengths != {len(self.bands)}:
                raise RSLabError(
                    f"the normalisation has {sorted(lengths)} values per statistic but the card lists "
                    f"{len(self.bands)} bands"
                )

    def _check_types(self) -> None:
        """RSLabError for a field of the wrong kind (a card edited by hand or written by other software), which
        would otherwise fail later with a bare TypeError far from its cause."""
        kinds = {"task": str, "architecture": str, "arguments": dict, "bands": list, "normalisation": dict,
                 "class_names": list, "training": dict, "metrics": dict, "bit_widths": (dict, type(None)),
                 "description": str, "created": str}
        for name, kind in kinds.items():
            if not isinstance(getattr(self, name), kind):
                raise RSLabError(f"the model card's {name!r} is {type(getattr(self, name)).__name__}, "
                                 f"not {getattr(kind, '__name__', 'a mapping or null')}: the card is malformed")
        for name, values in self.normalisation.items():
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
                raise RSLabError(f"the model card's normalisation {name!r} is not a list of numbers")
        for layer, bits in (self.bit_widths or {}).items():
            if not isinstance(bits, dict):
                raise RSLabError(f"the model card's bit widths of {layer!r} are not a mapping of bits")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        if not isinstance(text, str):
            raise RSLabError("the model card is missing (no JSON text in the checkpoint)")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RSLabError(f"the model card is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            kind = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
                type(data), "null")
            raise RSLabError(f"the model card is {kind}, not a JSON object: the card is malformed")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RSLabError(f"the model card has fields this RS Lab does not know: {', '.join(unknown)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise RSLabError(f"the model card lacks {', '.join(missing)}: the card is malformed")
        return cls(**data)

    def summary(self) -> Dict[str, Any]:
        """The parts of the card worth putting in a job report."""
        return {
            "task": self.task,
            "architecture": self.architecture,
            "bands": self.bands,
            "training_data": self.training.get("data"),
            "metrics": self.metrics,
            "quantised": self.compressed,
        }

    @property
    def compressed(self) -> bool:
        """Whether the card describes a compressed model: a layer below full precision in its bit widths.

        The one test of "compressed" (compression refuses such a model, training will not start from one).
        Float models exported before 2026-12-03 carry an all-32 plan and are full precision.
        """
        return any(b < FULL_PRECISION for bits in (self.bit_widths or {}).values() for b in bits.values())


@dataclass
class Checkpoint:
    card: ModelCard
    state_dict: Dict[str, Any]
    path: str = ""


def save_checkpoint(path: str, state_dict: Mapping[str, Any], card: ModelCard, atomic: bool = True) -> None:
    """Write weights and card to `path` (atomically: a temporary file renamed on success; `atomic=False` for a
    path that is already a job's temporary name, which the job commits with its other outputs)."""
    if not card.created:
        card.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    payload = {"format": FORMAT, "version": VERSION, "card": card.to_json(), "state_dict": tensors}
    if not atomic:
        _save(payload, path)
        return
    with PendingOutputs() as pending:
        _save(payload, pending.temp(path))


def _save(payload: Mapping[str, Any], path: str) -> None:
    """torch.save into memory, then to `path` through `write_bytes`: straight to a full disk it said only
    "[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0"."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue(), "could not write the checkpoint")


TASK_LABELS = {"classification": "classification", "change_detection": "change detection",
               "anomaly_detection": "anomaly detection (BSDM denoiser)"}  # a card's task as people read it


def task_label(task: str) -> str:
    """'change detection' for 'change_detection': a card's task in messages, docks and dialogs."""
    return TASK_LABELS.get(task, task.replace("_", " "))


def task_with_article(task: str) -> str:
    """'a change detection', 'an anomaly detection (BSDM denoiser)': a task as a message names it."""
    words = task_label(task)
    return f"{'an' if words[:1] in 'aeiou' else 'a'} {words}"


def load_checkpoint(path: str, task: Optional[str] = None) -> Checkpoint:
    """Read a checkpoint safely; with `task`, refuse checkpoints of another task."""
    import torch

    if not path or not os.path.isfile(path):
        raise RSLabError(f"checkpoint file not found: {path}")
    name = os.path.basename(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # torch.save: a zip archive (or a legacy pickle)
        raise RSLabError(f"{name} is not an RS Lab checkpoint (not a file written by torch.save)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RSLabError(
            f"{name} holds Python objects other than weights (it may run code when opened), "
            "so RS Lab refuses to load it"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise RSLabError(f"{name} is not a readable checkpoint ({exc})") from exc
    return _checked(payload, path, task)


def _checked(payload: Any, path: str, task: Optional[str]) -> Checkpoint:
    """The header, card and task checks of a loaded payload, the same for `load_checkpoint` and `read_card`."""
    name = os.path.basename(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RSLabError(f"{name} is not an RS Lab checkpoint (no '{FORMAT}' header)")
    if not isinstance(payload.get("version", 0), int):
        raise RSLabError(f"{name} has a format version {payload.get('version')!r} that is not a number")
    if payload.get("version", 0) > VERSION:
        raise RSLabError(
            f"{name} is checkpoint format version {payload.get('version')}; this RS Lab reads up to {VERSION}"
        )
    card = ModelCard.from_json(payload.get("card", ""))
    if task is not None and card.task != task:
        raise RSLabError(f"{name} is {task_with_article(card.task)} checkpoint; "
                         f"this job needs {task_with_article(task)} model")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise RSLabError(f"{name} has no weights")
    return Checkpoint(card=card, state_dict=state, path=path)


def read_card(path: str, task: Optional[str] = None) -> ModelCard:
    """The model card of a checkpoint, read without its weights and, for every file RS Lab writes, without
    importing torch.

    The docks read a card on QGIS's GUI thread to fit their widgets to a chosen model; going through
    `torch.load` there first imported torch, which froze QGIS for 1-2 s. Anything the light reader does not
    know (a legacy pickle, a file torch's own weights-only loader may still accept, a damaged or hostile
    file) goes through `load_checkpoint`, whose answer and refusals are the ones a user sees.
    """
    try:
        payload = _payload_without_weights(path)
    except Exception:  # noqa: BLE001 - any doubt: the full reader decides (and words the refusal)
        return load_checkpoint(path, task).card
    return _checked(payload, path, task).card


class _Weights:
    """What a tensor or its storage unpickles to in `_payload_without_weights`: a stand-in, never read."""

    def __init__(self, *_: Any) -> None:
        pass


class _CardUnpickler(pickle.Unpickler):
    """Unpickles torch's `data.pkl` with tensors as `_Weights`: only torch's tensor and storage globals and
    OrderedDict are known, anything else raises, so nothing in the file can run."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2") or (module == "torch" and name.endswith("Storage")):
            return _Weights
        raise pickle.UnpicklingError(f"{module}.{name} is not a tensor")

    def persistent_load(self, pid: Any) -> Any:
        return _Weights()


def _payload_without_weights(path: str) -> Any:
    """The checkpoint's top-level data with stand-ins for its tensors: only the `data.pkl` record of torch's
    zip format is read (a few hundred kB at most), never the weights' storage records."""
    with zipfile.ZipFile(path) as archive:
        records = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(records) != 1:
            raise ValueError("not torch's zip format")
        with archive.open(records[0]) as handle:
            return _CardUnpickler(handle).load()


def build_model(checkpoint: Checkpoint) -> Any:
    """Instantiate the card's architecture from the registry and load the weights (strictly).

    A compressed model takes its pruned layer shapes from its tensors one by one, so a damaged file can
    give layers that do not chain, or lack a weight scale; both are refused here (a smoke run of one small
    input for the first) rather than failing with a traceback inside a job.
    """
    from ..models import registry
    from .seeding import seeded_global_generator

    # the layers' initial weights come from torch's global generator (the checkpoint's replace them): drawn
    # under its lock, or a seeded job beside this one (a training, a BSDM run) drew another stream
    with seeded_global_generator(0):
        model = registry.build(checkpoint.card.architecture, checkpoint.card.arguments)
    # a bit plan means quantiser modules and packed weights, even all-32 ('compressed' is a layer below 32)
    planned = checkpoint.card.bit_widths is not None
    try:
        if planned:  # pruned shapes, then quantisers
            from .model_shapes import conform_to_state_dict
            from .quantization import apply_bit_plan, unpack_state

            state = {k.replace(".weight_levels", ".weight"): v for k, v in checkpoint.state_dict.items()
                     if not k.endswith(".weight_scale")}  # packed int8 weights have the layer's shape
            conform_to_state_dict(model, state)
            apply_bit_plan(model, checkpoint.card.bit_widths)
            state = unpack_state(model, checkpoint.state_dict)
        else:
            state = checkpoint.state_dict
        model.load_state_dict(state, strict=True)
        model.eval()
        if planned:
            _smoke_run(model, checkpoint.card)
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise RSLabError(
            f"the weights in {os.path.basename(checkpoint.path) or 'the checkpoint'} do not fit "
            f"architecture {checkpoint.card.architecture!r}: {detail}"
        ) from exc
    return model


def _smoke_run(model: Any, card: ModelCard) -> None:
    """One forward pass of the smallest example input (RuntimeError when the layers do not chain)."""
    import torch

    from .compression_tasks import MIN_INPUT_SIZE, example_inputs_for

    with torch.no_grad():
        model(*example_inputs_for(card, MIN_INPUT_SIZE))
