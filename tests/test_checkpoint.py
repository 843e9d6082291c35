"""The checkpoint format: model card round trip, registry lookup, and refusing code in files."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from rslab.core.checkpoint import ModelCard, build_model, load_checkpoint, read_card, save_checkpoint
from rslab.core.errors import RSLabError
from rslab.models import registry


@registry.register("test_pixel_mlp")
class PixelMLP(nn.Module):
    """A small per-pixel network used only to exercise the checkpoint machinery."""

    def __init__(self, bands: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(bands, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1))

    def forward(self, x):
        return self.net(x)


def _card(**kw):
    base = dict(task="change_detection", architecture="test_pixel_mlp", arguments={"bands": 3, "hidden": 8},
                bands=["red", "green", "blue"], normalisation={"mean": [0.5] * 3, "std": [0.2] * 3},
                training={"data": "levir_cd_256 train pairs"}, metrics={"f1": 0.7})
    base.update(kw)
    return ModelCard(**base)


def test_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = PixelMLP()
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, model.state_dict(), _card())
    ckpt = load_checkpoint(path, task="change_detection")
    assert ckpt.card.bands == ["red", "green", "blue"]
    assert ckpt.card.created  # stamped on save
    rebuilt = build_model(ckpt)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert os.listdir(tmp_path) == ["m.pt"]


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "rslab-checkpoint", "payload": Exploit()}, handle)
    with pytest.raises(RSLabError, match="refuses"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_wrong_task_unknown_architecture_and_mismatched_weights(tmp_path):
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, PixelMLP().state_dict(), _card())
    with pytest.raises(RSLabError, match="is a change detection checkpoint; this job needs an anomaly model"):
        load_checkpoint(path, task="anomaly")

    unknown = str(tmp_path / "u.pt")
    save_checkpoint(unknown, PixelMLP().state_dict(), _card(architecture="no_such_net"))
    with pytest.raises(RSLabError, match="unknown architecture 'no_such_net'"):
        build_model(load_checkpoint(unknown))

    wide = str(tmp_path / "w.pt")
    save_checkpoint(wide, PixelMLP(hidden=16).state_dict(), _card())
    with pytest.raises(RSLabError, match="do not fit"):
        build_model(load_checkpoint(wide))


def test_files_that_are_not_checkpoints(tmp_path):
    with pytest.raises(RSLabError, match="not found"):
        load_checkpoint(str(tmp_path / "none.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RSLabError):
        load_checkpoint(str(junk))
    plain = tmp_path / "plain.pt"
    torch.save(PixelMLP().state_dict(), plain)  # weights without a model card
    with pytest.raises(RSLabError, match="not an RS Lab checkpoint"):
        load_checkpoint(str(plain))


def test_a_card_is_read_without_torch_and_says_what_the_full_read_says(tmp_path):
    """The change dock reads a chosen checkpoint's card on QGIS's GUI thread to check the bands its model reads;
    through torch.load that first imported torch and froze QGIS 1-2 s. The card alone needs no torch, and is the
    card the full read gives, for the shipped files and for one saved here (an OrderedDict of weights)."""
    import subprocess
    import sys

    from rslab.core.weights import WEIGHTS_DIR

    saved = str(tmp_path / "m.pt")
    save_checkpoint(saved, PixelMLP().state_dict(), _card(training={"params": {"bands": [4, 3, 2]}}))
    paths = sorted(str(p) for p in WEIGHTS_DIR.glob("*.pt")) + [saved]
    assert len(paths) == 4
    for path in paths:
        assert read_card(path) == load_checkpoint(path).card
    with pytest.raises(RSLabError, match="is a change detection checkpoint; this job needs a classification model"):
        read_card(saved, task="classification")
    probe = ("import sys; from rslab.core.checkpoint import read_card; "
             f"cards = [read_card(p).task for p in {paths!r}]; print(cards, 'torch' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["['change_detection',", "'change_detection',", "'classification',",
                                    "'change_detection']", "False"], shown.stderr


def test_a_card_read_refuses_what_the_full_read_refuses_without_running_it(tmp_path):
    """Code hidden in torch's zip format (what torch.save writes) or in a plain pickle: refused by `read_card` as by
    `load_checkpoint`, and nothing runs; a file in torch's legacy format still gives its card (through torch)."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    zipped = tmp_path / "evil.pt"
    torch.save({"format": "rslab-checkpoint", "version": 1, "card": _card().to_json(),
                "state_dict": {"w": torch.ones(2)}, "payload": Exploit()}, zipped)
    plain = tmp_path / "evil_plain.pt"
    with open(plain, "wb") as handle:
        pickle.dump({"format": "rslab-checkpoint", "payload": Exploit()}, handle)
    for path in (zipped, plain):
        for read in (load_checkpoint, read_card):
            with pytest.raises(RSLabError, match="holds Python objects other than weights"):
                read(str(path))
    assert not marker.exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": "rslab-checkpoint", "version": 1, "card": _card().to_json(),
                "state_dict": PixelMLP().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    assert read_card(str(legacy)) == _card()
    with pytest.raises(RSLabError, match="not found"):
        read_card(str(tmp_path / "none.pt"))


def test_model_card_validation():
    with pytest.raises(RSLabError, match="task"):
        ModelCard(task="", architecture="x")
    with pytest.raises(RSLabError, match="bands"):
        ModelCard(task="t", architecture="x", bands=["a", "b"], normalisation={"mean": [0.0] * 3})
    with pytest.raises(RSLabError, match="does not know"):
        ModelCard.from_json('{"task": "t", "architecture": "x", "surprise": 1}')
    card = _card(bit_widths={"net.0": {"weight": 4, "activation": 4}})
    assert ModelCard.from_json(card.to_json()) == card
    assert card.summary()["quantised"] is True


@pytest.mark.parametrize("change, message", [
    (lambda card: card.pop("task"), "lacks task"),
    (lambda card: card.update(bands=3), "'bands' is int, not list"),
    (lambda card: card.update(normalisation={"mean": 0.5, "std": 0.2}), "normalisation 'mean' is not a list"),
    (lambda card: card.update(bit_widths=[4, 4]), "'bit_widths' is list"),
    (lambda card: card.update(metrics=None), "'metrics' is NoneType"),
])
def test_a_malformed_card_is_refused_with_a_message(tmp_path, change, message):
    """Cards edited by hand or written by other software: RSLabError (the docks and Processing report it), not a
    bare TypeError from deep inside."""
    import json

    path = tmp_path / "m.pt"
    save_checkpoint(str(path), PixelMLP().state_dict(), _card())
    payload = torch.load(path, weights_only=True)
    card = json.loads(payload["card"])
    change(card)
    payload["card"] = json.dumps(card)
    torch.save(payload, path)
    for read in (load_checkpoint, read_card):  # the card alone is refused in the same words
        with pytest.raises(RSLabError, match=message):
            read(str(path))
    for card_text, words in ((json.dumps([card]), "an array"), (None, "missing")):
        payload["card"] = card_text
        torch.save(payload, path)
        for read in (load_checkpoint, read_card):
            with pytest.raises(RSLabError, match=words):
                read(str(path))
    payload["card"], payload["version"] = _card().to_json(), "1"
    torch.save(payload, path)
    for read in (load_checkpoint, read_card):
        with pytest.raises(RSLabError, match="not a number"):
            read(str(path))


@pytest.mark.parametrize("damage", ["a channel cut from one layer's weights", "one layer's weight scale lost"])
def test_a_damaged_compressed_checkpoint_is_refused_with_a_message(tmp_path, damage):
    """The shipped compressed AR-CDNet, damaged: pruned shapes are read from each tensor, so a cut channel built
    a model whose layers do not chain (a RuntimeError in the first forward pass, inside detect_changes), and a
    missing scale raised a KeyError; both reached the user as tracebacks."""
    import copy

    from rslab.core.weights import WEIGHTS_DIR

    shipped = load_checkpoint(str(WEIGHTS_DIR / "arcdnet_levir_dsifn_compressed.pt"))
    assert build_model(shipped) is not None  # the intact file passes the same checks
    state = dict(shipped.state_dict)
    if damage.startswith("a channel"):
        key = [k for k in state if k.endswith(".weight_levels")][3]
        state[key] = state[key][:, :-1].contiguous()
    else:
        del state[[k for k in state if k.endswith(".weight_scale")][0]]
    path = str(tmp_path / "damaged.pt")
    save_checkpoint(path, state, copy.deepcopy(shipped.card))
    with pytest.raises(RSLabError, match="the weights in damaged.pt do not fit architecture 'arcdnet': "):
        build_model(load_checkpoint(path))


def test_the_shipped_compressed_card_records_what_the_compression_panel_reads():
    """The panel's 'before' column of a compressed checkpoint comes from its card: the shipped one predated the
    parameter count and showed '—' (added to its card on 2026-12-03, weights unchanged)."""
    from rslab.core.weights import WEIGHTS_DIR

    shipped = load_checkpoint(str(WEIGHTS_DIR / "arcdnet_levir_dsifn_compressed.pt"))
    record = shipped.card.training["compression"]
    full = load_checkpoint(str(WEIGHTS_DIR / "arcdnet_levir_dsifn.pt"))
    assert record["params_before"] == sum(p.numel() for p in build_model(full).parameters())
    assert record["params_after"] == sum(p.numel() for p in build_model(shipped).parameters())
    for key in ("gbops_before", "size_mb_before", "bops_ratio", "scores_before", "scores_after"):
        assert key in record, key


def test_a_checkpoint_or_report_that_meets_a_full_disk_says_so(tmp_path):
    """torch.save on a full disk said "[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0", and
    a report a bare OSError, each with its traceback, where rasters said what failed and the room left.
    /dev/full answers every write with ENOSPC, as a full disk does."""
    from rslab.core.outputs import write_json

    card = ModelCard(task="classification", architecture="resnet_cifar", arguments={"depth": 20})
    with pytest.raises(RSLabError, match=r"^could not write the checkpoint \(\[Errno 28\] No space left on device\); "
                                         r".* free in /dev: is the disk full\?$"):
        save_checkpoint("/dev/full", {"w": torch.ones(100_000)}, card, atomic=False)
    with pytest.raises(RSLabError, match=r"^could not write the report \(\[Errno 28\] No space left on device\); "
                                         r".* free in /dev: is the disk full\?$"):
        write_json("/dev/full", {"best_f1": 0.7})
    save_checkpoint(str(tmp_path / "m.pt"), {"w": torch.ones(3)}, card)  # with room: written
    write_json(tmp_path / "r.json", {"best_f1": 0.7})
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "r.json"] and (tmp_path / "r.json").read_text() == '{"best_f1": 0.7}\n'

