"""Training AR-CDNet on a partially labelled pair: unlabelled pixels stay out of the loss and the validation."""
from __future__ import annotations

import os

import numpy as np
import pytest
from levir import LEVIR, levir_pair
import rasterio
from rasterio.windows import Window

from rslab.core.change_data import ChangePair, LabelledPixels, PairSampler, pairs_from_folder, read_pair
from rslab.core.change_training import TrainChangeParams, train_change_detector
from rslab.core.checkpoint import read_card
from rslab.core.errors import RSLabError

TINY = dict(iterations=2, eval_every=1, crop=64, batch_size=2, base=8, channels=8)


@pytest.fixture()
def nanjing(shared_data) -> ChangePair:
    root = shared_data / "change" / "landsat_nanjing"
    return ChangePair(str(root / "Nanjing_t1_TM6b.tif"), str(root / "Nanjing_t2_TM6b.tif"),
                      str(root / "Nanjing_reference_0unl_1unch_2ch.tif"))


def test_partial_labels_mark_unlabelled_pixels_invalid(nanjing):
    with rasterio.open(nanjing.label) as ds:
        values = ds.read(1)
    _, _, label, valid = read_pair(nanjing, Window(0, 0, 800, 800), "partial")
    assert np.array_equal(valid, values > 0) and np.array_equal(label == 1, values == 2)
    _, _, label, valid = read_pair(nanjing, Window(0, 0, 800, 800))  # binary: every pixel, non-zero = change
    assert valid.all() and np.array_equal(label == 1, values > 0)


def test_training_on_partial_labels_validates_on_the_labelled_pixels(nanjing, tmp_path):
    path = tmp_path / "nanjing.pt"
    result = train_change_detector([nanjing], [nanjing], str(path), TrainChangeParams(**TINY, label_coding="partial"))
    assert result.notes == [] and len(result.history) == 2
    assert all(np.isfinite(r["loss"]) for r in result.history)
    card = read_card(str(path))
    assert card.arguments["bands"] == 6 and card.training["params"]["label_coding"] == "partial"
    assert card.metrics["validation"]["pixels"] == 14756

    binary = train_change_detector([nanjing], [nanjing], str(tmp_path / "binary.pt"), TrainChangeParams(**TINY))
    assert any("values of the training labels are 0, 1 and 2" in note for note in binary.notes)
    assert read_card(str(tmp_path / "binary.pt")).metrics["validation"]["pixels"] == 800 * 800


def test_labels_the_partial_coding_cannot_read_stop_before_training(shared_data, tmp_path):
    root = shared_data / LEVIR
    name = "test_2_0000_0000.png"
    pair = ChangePair(str(root / "A" / name), str(root / "B" / name), str(root / "label" / name))  # 0 / 255
    output = tmp_path / "never.pt"
    with pytest.raises(RSLabError, match="value 255 in the training labels"):
        train_change_detector([pair], [pair], str(output), TrainChangeParams(**TINY, label_coding="partial"))
    assert not output.exists()
    with pytest.raises(RSLabError, match="binary, partial"):
        TrainChangeParams(label_coding="sparse")


def test_a_model_trained_on_chosen_bands_records_them_and_detection_asks_for_them(shared_data, tmp_path):
    """Trained on OSCD Rennes' 10 m bands (BANDS 2, 3, 4, 8 of 13), the card names them (B02, B03, B04, B08) and
    their numbers; detection on the 13-band pair without BANDS says which to choose, with them in another order
    it notes the difference, in the model's order it does not."""
    from rslab.core.change_detection import ChangeOutputs, ChangeParams, detect_changes
    from rslab.core.change_model import trained_bands

    root = shared_data / "change" / "oscd_s2"
    full = [str(root / f"rennes_{date}_S2_13b_10m.tif") for date in ("t1", "t2")]
    pair = ChangePair(*full, str(root / "rennes_cm.tif"))
    model = str(tmp_path / "s2.pt")
    result = train_change_detector([pair], [pair], model, TrainChangeParams(**TINY, bands=(2, 3, 4, 8)))
    card = read_card(model)
    assert card.arguments["bands"] == 4 and card.bands == ["B02", "B03", "B04", "B08"]
    assert trained_bands(card) == [2, 3, 4, 8] and card.training["train_pairs"] == ["rennes_t1_S2_13b_10m"]
    assert len(card.normalisation["mean"]) == 4 and len(result.history) == 2

    with pytest.raises(RSLabError, match="trained on bands 2, 3, 4, 8 of its images"):
        detect_changes(*full, ChangeOutputs(change=str(tmp_path / "all.tif")), ChangeParams(model=model))
    assert not (tmp_path / "all.tif").exists()
    notes = {}
    for bands in ((2, 3, 4, 8), (4, 3, 2, 8)):
        result = detect_changes(*full, ChangeOutputs(change=str(tmp_path / f"{bands[0]}.tif")),
                                ChangeParams(model=model, bands=bands, tile=256, overlap=32))
        notes[bands] = [n for n in result.notes if "trained on bands" in n]
    assert notes[(2, 3, 4, 8)] == []
    assert len(notes[(4, 3, 2, 8)]) == 1 and "B04, B03, B02, B08" in notes[(4, 3, 2, 8)][0]

    with pytest.raises(RSLabError, match="starting checkpoint was trained for 4 bands.*bands 2, 3, 4, 8"):
        train_change_detector([pair], [pair], str(tmp_path / "tuned.pt"), TrainChangeParams(**TINY, init_checkpoint=model))


def test_bands_the_images_lack_stop_training_before_any_work(shared_data, tmp_path):
    root = shared_data / "change" / "oscd_s2"
    pair = ChangePair(*(str(root / f"rennes_{d}_S2_13b_10m.tif") for d in ("t1", "t2")), str(root / "rennes_cm.tif"))
    output = tmp_path / "never.pt"
    with pytest.raises(RSLabError, match="rennes_t1_S2_13b_10m's before image has 13 bands; there is no band 14"):
        train_change_detector([pair], [pair], str(output), TrainChangeParams(**TINY, bands=(2, 14)))
    with pytest.raises(RSLabError, match="names a band twice"):
        train_change_detector([pair], [pair], str(output), TrainChangeParams(**TINY, bands=(2, 2)))
    assert not output.exists()
    with pytest.raises(RSLabError, match="band list is empty"):
        TrainChangeParams(bands=())


def three_patches(nanjing, folder) -> ChangePair:
    """Nanjing's reference kept in three 80 x 80 patches only (2,067 labelled pixels): a few drawn polygons."""
    with rasterio.open(nanjing.label) as src:
        values, profile = src.read(1), src.profile
    keep = np.zeros(values.shape, bool)
    for r, c in ((80, 0), (240, 160), (560, 320)):
        keep[r:r + 80, c:c + 80] = True
    values[~keep] = 0
    with rasterio.open(folder / "patches.tif", "w", **profile) as dst:
        dst.write(values, 1)
    return ChangePair(nanjing.before, nanjing.after, str(folder / "patches.tif"))


def test_labelled_pixels_are_found_by_windows_and_drawn_uniformly(nanjing, tmp_path):
    pair = three_patches(nanjing, tmp_path)
    with rasterio.open(pair.label) as src:
        labelled = src.read(1) > 0
    windowed = LabelledPixels(pair, (800, 800), 64, "partial")  # read by blocks, as for a large raster
    in_memory = LabelledPixels(pair, (800, 800), 64, "partial", read_pair(pair, Window(0, 0, 800, 800), "partial")[3])
    assert windowed.total == in_memory.total == labelled.sum() > 0
    assert np.array_equal(windowed.counts, in_memory.counts)
    rng = np.random.default_rng(0)
    draws = [windowed.draw(rng) for _ in range(600)]
    assert all(labelled[r, c] for r, c in draws)
    patch = [sum(r0 <= r < r0 + 80 and c0 <= c < c0 + 80 for r, c in draws) for r0, c0 in ((80, 0), (240, 160), (560, 320))]
    counts = [labelled[r0:r0 + 80, c0:c0 + 80].sum() for r0, c0 in ((80, 0), (240, 160), (560, 320))]
    expected = np.array(counts) / sum(counts) * 600
    assert np.all(np.abs(np.array(patch) - expected) < 5 * np.sqrt(expected) + 5)  # in proportion to their pixels


def test_crops_from_partial_labels_are_centred_on_labelled_pixels(nanjing, tmp_path):
    pair = three_patches(nanjing, tmp_path)
    centred = PairSampler([pair], 64, seed=0, coding="partial")
    uniform = PairSampler([pair], 64, seed=0, coding="partial", centred=False)
    assert centred.centred and not PairSampler([pair], 64, seed=0).centred  # binary labels: anywhere
    hits = {name: sum(sampler.sample()[3].any() for _ in range(100)) for name, sampler in
            (("centred", centred), ("uniform", uniform))}
    assert hits["centred"] == 100 and hits["uniform"] < 40
    empty = tmp_path / "empty.tif"
    with rasterio.open(pair.label) as src, rasterio.open(empty, "w", **src.profile) as dst:
        dst.write(np.zeros((1, 800, 800), np.uint8))
    with pytest.raises(RSLabError, match="training labels have no labelled pixel"):
        PairSampler([ChangePair(pair.before, pair.after, str(empty))], 64, coding="partial")
    with pytest.raises(RSLabError, match="crop_sampling must be one of auto, uniform, labelled"):
        TrainChangeParams(crop_sampling="random")


def test_label_nodata_is_left_out_of_training_and_validation(nanjing, tmp_path):
    """An unsurveyed half marked with the label's nodata value (255) is neither change nor no change."""
    with rasterio.open(nanjing.label) as src:
        values, profile = src.read(1), src.profile
    values[:, 400:] = 255
    with rasterio.open(tmp_path / "half.tif", "w", **dict(profile, nodata=255)) as dst:
        dst.write(values, 1)
    pair = ChangePair(nanjing.before, nanjing.after, str(tmp_path / "half.tif"))
    for coding, labelled in (("partial", values[:, :400] > 0), ("binary", np.ones((800, 400), bool))):
        _, _, label, valid = read_pair(pair, Window(0, 0, 800, 800), coding)
        assert not valid[:, 400:].any() and np.array_equal(valid[:, :400], labelled)
    assert LabelledPixels(pair, (800, 800), 64, "partial").total == int((values[:, :400] > 0).sum())
    result = train_change_detector([pair], [pair], str(tmp_path / "m.pt"), TrainChangeParams(**TINY, label_coding="partial"))
    assert read_card(str(tmp_path / "m.pt")).metrics["validation"]["pixels"] == int((values[:, :400] > 0).sum())
    assert result.history


def test_outputs_and_starting_checkpoints_that_would_lose_a_file_are_refused(shared_data, tmp_path):
    """Training wrote its checkpoint over a label raster or its starting checkpoint; a compressed starting
    checkpoint trained, then saved weights that did not load. Each now stops before any work."""
    import shutil
    from pathlib import Path

    from rslab.core.weights import default_checkpoint

    weights = Path(default_checkpoint("change_detection")).parent
    original = levir_pair(shared_data, "test_2_0000_0000.png")  # copied: a regression must not write over shared data
    pair = ChangePair(*(shutil.copy(path, tmp_path / f"{role}.png")
                        for role, path in zip(("before", "after", "label"), (original.before, original.after, original.label))))
    start = shutil.copy(weights / "arcdnet_levir_dsifn.pt", tmp_path / "start.pt")
    cases = [(pair.label, TrainChangeParams(**TINY), "the checkpoint would replace the label raster of"),
             (start, TrainChangeParams(**TINY, init_checkpoint=start),
              "the checkpoint would replace the starting checkpoint"),
             (str(tmp_path / "ft.pt"), TrainChangeParams(**TINY, init_checkpoint=str(
                 weights / "arcdnet_levir_dsifn_compressed.pt")), "starting checkpoint is compressed")]
    kept = {path: open(path, "rb").read() for path in (start, pair.label)}
    for output, params, message in cases:
        with pytest.raises(RSLabError, match=message):
            train_change_detector([pair], [pair], output, params)
    assert all(open(path, "rb").read() == data for path, data in kept.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.png", "before.png", "label.png", "start.pt"]


def test_validation_pairs_without_change_keep_the_last_checkpoint_with_a_note(shared_data, tmp_path):
    """F1 is 0 on them whatever the model, so the first evaluation used to be kept and the rest thrown away."""
    unchanged = next(p for p in sorted((shared_data / LEVIR / "label").iterdir())
                     if rasterio.open(p).read(1).max() == 0)
    result = train_change_detector([levir_pair(shared_data, "test_2_0000_0000.png")], [levir_pair(shared_data, unchanged.name)],
                                   str(tmp_path / "m.pt"), TrainChangeParams(**dict(TINY, iterations=4)))
    assert result.best_iteration == 4 and any("no changed pixel" in note for note in result.notes)


def test_the_device_is_chosen_per_run_and_recorded_once(shared_data, tmp_path):
    """`device` picks where a run trains ('auto': CUDA when torch sees a GPU); the card records the device used,
    not the choice. A GPU asked for where torch sees none is refused before any work."""
    import torch

    pair = levir_pair(shared_data, "test_2_0000_0000.png")
    path = str(tmp_path / "m.pt")
    result = train_change_detector([pair], [pair], path, TrainChangeParams(**TINY, device="cpu"))
    card = read_card(path)
    assert result.device.startswith("cpu (") and card.training["device"] == result.device
    assert "device" not in card.training["params"]
    if not torch.cuda.is_available():  # CI and the development machine; bench/gpu.py runs the GPU where there is one
        with pytest.raises(RSLabError, match="a CUDA device was requested but torch sees no GPU"):
            train_change_detector([pair], [pair], str(tmp_path / "g.pt"), TrainChangeParams(**TINY, device="cuda"))
        assert not (tmp_path / "g.pt").exists()


def test_a_cancel_during_validation_stops_it(shared_data, tmp_path, monkeypatch):
    """The cancel check runs per validation window: cancelled as validation starts, no window is predicted."""
    from rslab.core import change_training
    from rslab.core.errors import JobCancelled

    pair = levir_pair(shared_data, "test_2_0000_0000.png")
    state = {"validating": False, "windows": 0}
    real_read = change_training.read_pair

    def counted(*args, **kwargs):  # validation's window reads (training crops come from the sampler)
        state["windows"] += state["validating"]
        return real_read(*args, **kwargs)

    def progress(fraction, message):  # the last report before the first validation pass
        state["validating"] = state["validating"] or message.startswith("iteration 1 ")

    monkeypatch.setattr(change_training, "read_pair", counted)
    with pytest.raises(JobCancelled):
        train_change_detector([pair], [pair] * 4, str(tmp_path / "m.pt"), TrainChangeParams(**TINY), progress,
                              lambda: state["validating"])
    assert state["windows"] == 0 and not (tmp_path / "m.pt").exists()


def test_a_large_set_of_small_pairs_is_held_in_memory_only_up_to_a_budget(shared_data, monkeypatch):
    from rslab.core import change_data

    pairs = [levir_pair(shared_data, name) for name in ("test_2_0000_0000.png", "test_102_0512_0000.png",
                                                    "test_77_0512_0256.png")]
    per_pair = 256 * 256 * (2 * 4 * 3 + 4 + 2)  # two float32 dates, a float32 label, two masks
    monkeypatch.setattr(change_data, "IN_MEMORY_BYTES", 2 * per_pair)
    sampler = PairSampler(pairs, 64)
    assert sorted(sampler.cache) == [0, 1]
    crops = [sampler.sample() for _ in range(30)]  # the third pair is read by windows
    assert all(c[0].shape == (3, 64, 64) for c in crops)


def test_a_float_model_exported_with_an_all_32_bit_plan_is_full_precision(shared_data, tmp_path):
    """Exports of float models written before 2026-12-03 carry an all-32 bit plan: they are not compressed, so
    training starts from them and compression takes them (both refused them as compressed)."""
    import dataclasses

    from rslab.core.checkpoint import build_model, load_checkpoint, save_checkpoint
    from rslab.core.quantization import bit_plan
    from rslab.core.weights import default_checkpoint

    shipped = load_checkpoint(default_checkpoint("change_detection"))
    plan = bit_plan(build_model(shipped))
    assert {b for bits in plan.values() for b in bits.values()} == {32}
    old_export = str(tmp_path / "old_float_export.pt")
    save_checkpoint(old_export, shipped.state_dict, dataclasses.replace(shipped.card, bit_widths=plan))
    card = read_card(old_export)
    assert not card.compressed and not card.summary()["quantised"]
    pair = levir_pair(shared_data, "test_2_0000_0000.png")
    result = train_change_detector([pair], [pair], str(tmp_path / "tuned.pt"),
                                   TrainChangeParams(**dict(TINY, iterations=1), init_checkpoint=old_export))
    assert result.history and load_checkpoint(str(tmp_path / "tuned.pt")).card.arguments == shipped.card.arguments
    compressed = str(default_checkpoint("change_detection")).replace(".pt", "_compressed.pt")
    assert read_card(compressed).compressed


def test_every_pair_file_is_listed_among_a_runs_inputs_even_with_repeated_names():
    """Training and validation folders often reuse file names (train/00001.png, val/00001.png)."""
    from rslab.core.change_training import training_inputs

    pairs = [ChangePair(f"/d/{part}/A/1.png", f"/d/{part}/B/1.png", f"/d/{part}/label/1.png") for part in ("t", "v")]
    listed = set(training_inputs(pairs[:1], pairs[1:], "/d/start.pt").values())
    assert listed == {getattr(p, role) for p in pairs for role in ("before", "after", "label")} | {"/d/start.pt"}


def _with_nodata(pair: ChangePair, folder, nodata: float, rows=slice(0, 40)) -> ChangePair:
    """The pair as float32 GeoTIFFs whose before date is `nodata` over `rows` (a strip the sensor missed)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for role in ("before", "after"):
        with rasterio.open(getattr(pair, role)) as src:
            data = src.read().astype(np.float32)
        if role == "before":
            data[:, rows] = nodata
        path = folder / f"{role}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                           dtype="float32", nodata=nodata) as dst:
            dst.write(data)
        paths.append(str(path))
    return ChangePair(paths[0], paths[1], pair.label)


def test_nodata_reaches_the_model_as_detection_feeds_it(shared_data, tmp_path):
    """Training and validation fed nodata to the network as read: a NaN strip spread through its global pooling
    (NaN loss, a checkpoint of NaN weights), and a -9999 strip made the validation F1 0 where detection, which
    fills nodata with the band means, scores the same model at 0.89."""
    import torch

    from rslab.core.change_detection import ChangeOutputs, ChangeParams, detect_changes
    from rslab.core.change_training import evaluate
    from rslab.core.checkpoint import build_model, load_checkpoint
    from rslab.core.weights import default_checkpoint

    pair = levir_pair(shared_data, "test_102_0512_0000.png")
    with_nan = _with_nodata(pair, tmp_path / "nan", float("nan"))
    result = train_change_detector([with_nan], [with_nan], str(tmp_path / "m.pt"), TrainChangeParams(**TINY))
    assert all(np.isfinite(r["loss"]) for r in result.history)
    assert all(torch.isfinite(t).all() for t in load_checkpoint(str(tmp_path / "m.pt")).state_dict.values())

    shipped = load_checkpoint(default_checkpoint("change_detection"))
    model, (mean, std) = build_model(shipped), (shipped.card.normalisation["mean"], shipped.card.normalisation["std"])
    with_fill = _with_nodata(pair, tmp_path / "fill", -9999.0)
    validated = evaluate(model, [with_fill], mean, std, torch.device("cpu"))
    detected = detect_changes(with_fill.before, with_fill.after, ChangeOutputs(str(tmp_path / "c.tif")),
                              ChangeParams(), reference=with_fill.label)
    assert validated["pixels"] == detected.metrics["pixels"] == 256 * (256 - 40)
    assert validated["f1"] == pytest.approx(detected.metrics["f1"], abs=1e-6) and validated["f1"] > 0.5


def test_pasted_changes_stay_off_padding_and_nodata(shared_data, tmp_path):
    """Crops larger than a 40 x 40 raster are padded: pasted changes used to mark padding as valid 'change'."""
    pair = levir_pair(shared_data, "test_102_0512_0000.png")
    small = []
    for role in ("before", "after", "label"):
        with rasterio.open(getattr(pair, role)) as src:
            data = src.read(window=Window(100, 100, 40, 40))
        path = tmp_path / f"{role}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=data.shape[0],
                           dtype=data.dtype.name) as dst:
            dst.write(data)
        small.append(str(path))
    sampler = PairSampler([ChangePair(*small), pair], 64, paste=1.0)  # the 256 x 256 pair donates changes
    sampler.weights = np.array([1.0, 0.0])  # crops from the small raster only
    assert all(sampler.sample()[3].sum() <= 40 * 40 for _ in range(40))


def test_a_batch_of_one_needs_crops_of_64_pixels():
    with pytest.raises(RSLabError, match="at least 64 pixels"):
        TrainChangeParams(batch_size=1, crop=32)
    TrainChangeParams(batch_size=1, crop=64)
    TrainChangeParams(batch_size=2, crop=32)


def test_pasted_changes_land_on_unlabelled_pixels_with_data(shared_data):
    """Partial labels leave most of a crop unlabelled but with data in both dates: pastes belong there too (the
    padding fix had limited them to labelled pixels, 80 % fewer)."""
    sampler = PairSampler([levir_pair(shared_data, "test_102_0512_0000.png")], 64, paste=1.0)
    b = np.zeros((3, 64, 64), np.float32)
    unlabelled, data = np.zeros((64, 64), bool), np.ones((64, 64), bool)
    pasted = [sampler._paste_changes(b, np.zeros((64, 64), np.float32), unlabelled, data)[2].sum() for _ in range(20)]
    assert sum(pasted) > 0
    no_data = np.zeros((64, 64), bool)
    assert all(sampler._paste_changes(b, np.zeros((64, 64), np.float32), unlabelled, no_data)[2].sum() == 0
               for _ in range(20))


def test_a_starting_checkpoint_fixes_the_width_and_the_card_says_so(shared_data, tmp_path, tiny_change_checkpoint):
    """A width asked for beside a starting checkpoint was dropped silently, while the card's params recorded
    it (base 64 on a base-8 model), and the card did not say the model was fine-tuned from another."""
    pairs = pairs_from_folder(str(shared_data / LEVIR), ["train_36_0512_0512", "test_77_0512_0256"])
    output = str(tmp_path / "tuned.pt")
    result = train_change_detector(pairs[:1], pairs[1:], output,
                                   TrainChangeParams(iterations=1, eval_every=1, crop=64, batch_size=2, base=64,
                                                     channels=64, init_checkpoint=tiny_change_checkpoint))
    card = read_card(output)
    used = {k: card.arguments[k] for k in ("base", "channels")}
    assert {k: card.training["params"][k] for k in ("base", "channels")} == used != {"base": 64, "channels": 64}
    assert card.training["started_from"]["file"] == os.path.basename(tiny_change_checkpoint)
    assert [n for n in result.notes if n.startswith("the starting checkpoint fixes the network width")]
    assert result.history[-1]["kept"] is True


def test_chosen_bands_without_descriptions_keep_their_numbers_in_the_card(shared_data, tmp_path):
    """Landsat Nanjing's bands 4, 3, 2 (near infrared, red, green) were named red, green, blue in the card."""
    root = shared_data / "change" / "landsat_nanjing"
    pair = ChangePair(str(root / "Nanjing_t1_TM6b.tif"), str(root / "Nanjing_t2_TM6b.tif"),
                      str(root / "Nanjing_reference_0unl_1unch_2ch.tif"))
    output = str(tmp_path / "nir.pt")
    train_change_detector([pair], [pair], output, TrainChangeParams(iterations=1, eval_every=1, crop=64, batch_size=2,
                                                                    base=8, channels=8, bands=(4, 3, 2),
                                                                    label_coding="partial"))
    assert read_card(output).bands == ["band 4", "band 3", "band 2"]


def test_a_0_1_label_read_as_partial_gets_a_note(tmp_path):
    """Read as partial, a 0/1 mask's changes (1) train as 'no change': no word was said."""
    from rslab.core.change_reference import ReferenceValues, coding_note

    seen = ReferenceValues()
    seen.present.update({0, 1})
    assert "0 and 1 only, read as partial" in coding_note(seen, "partial", "training labels")
    seen.present.discard(0)
    assert "the values of the training labels are 1 only" in coding_note(seen, "partial", "training labels")
    seen.present.add(2)
    assert coding_note(seen, "partial", "training labels") is None


def test_the_checkpoint_saved_is_the_best_validated_not_the_last(nanjing, tmp_path, monkeypatch):
    """Four validations scoring F1 0.2, 0.6, 0.4, 0.5: the weights of the second are saved, with its F1."""
    import torch

    from rslab.core import change_training
    from rslab.core.checkpoint import load_checkpoint

    f1s, states = iter([0.2, 0.6, 0.4, 0.5]), []
    real = change_training.evaluate

    def scripted(model, *args, **kwargs):  # the real validation, then a scripted F1
        scores = dict(real(model, *args, **kwargs), f1=next(f1s), changed=True)
        states.append({k: t.detach().clone() for k, t in model.state_dict().items()})
        return scores

    monkeypatch.setattr(change_training, "evaluate", scripted)
    path = tmp_path / "best.pt"
    result = train_change_detector([nanjing], [nanjing], str(path),
                                   TrainChangeParams(**dict(TINY, iterations=4), label_coding="partial"))
    assert (result.best_iteration, result.best_f1) == (2, 0.6)
    assert [r["kept"] for r in result.history] == [True, True, False, False]
    saved = load_checkpoint(str(path))
    assert saved.card.metrics["best_iteration"] == 2 and saved.card.metrics["validation"]["f1"] == 0.6
    assert all(torch.equal(saved.state_dict[k], v) for k, v in states[1].items())
    assert not all(torch.equal(saved.state_dict[k], v) for k, v in states[3].items())  # the weights moved on


def test_validation_reports_each_window(shared_data, tmp_path):
    """A validation pass over a large pair (30 s on 3000 x 3000) said nothing while the bar stood still."""
    pair = levir_pair(shared_data, "test_2_0000_0000.png")
    seen = []
    train_change_detector([pair], [pair] * 3, str(tmp_path / "m.pt"), TrainChangeParams(**TINY),
                          lambda fraction, message: seen.append((fraction, message)))
    validating = [(f, m) for f, m in seen if m.startswith("validating")]
    assert [m for _, m in validating] == [f"validating after iteration {i}: window {w} of 3"
                                          for i in (1, 2) for w in (1, 2, 3)]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)
    # the bar moves through each pass and reaches its end only after the last one (it stood still through
    # every pass, and at 100 % through the last: minutes on a large validation pair)
    first, second = [f for f, _ in validating[:3]], [f for f, _ in validating[3:]]
    assert first[0] < first[1] < first[2] < second[0] < second[1] < second[2] < 1.0
    training = [f for f, m in seen if m.startswith("iteration ") and " of " in m]
    assert training[0] < first[0] and first[2] < training[1] < second[0]


def test_the_bar_does_not_step_back_when_validation_does_not_divide_the_iterations(shared_data, tmp_path):
    """Five iterations validated every two: after each validation the bar fell back (0.4 -> 0.334, 0.8 ->
    0.669), reported by iterations where every other step goes by pixels."""
    pair = levir_pair(shared_data, "test_2_0000_0000.png")
    seen = []
    params = TrainChangeParams(**dict(TINY, iterations=5, eval_every=2))
    train_change_detector([pair], [pair], str(tmp_path / "m.pt"), params,
                          lambda fraction, message: seen.append((fraction, message)))
    fractions = [f for f, _ in seen]
    assert len([m for _, m in seen if m.startswith("iteration") and "validation F1" in m]) == 3
    assert fractions == sorted(fractions)


def test_a_label_of_the_images_size_placed_elsewhere_is_refused_and_a_plain_one_read(shared_data, tmp_path):
    """Training read a label of the images' size pixel for pixel wherever it lay on the map (detection
    resamples such a reference and says it covers 0.023 % of the image): it trained on misplaced labels."""
    from rslab.core.change_data import check_pair

    root = shared_data / "change" / "oscd_s2"
    before, after = (str(root / f"rennes_{d}_S2_13b_10m.tif") for d in ("t1", "t2"))
    with rasterio.open(root / "rennes_cm.tif") as src:
        label, profile = src.read(), src.profile
    moved = tmp_path / "moved_cm.tif"
    t = profile["transform"]
    with rasterio.open(moved, "w", **dict(profile, transform=rasterio.Affine(t.a, t.b, t.c + 5000, t.d, t.e, t.f))) as dst:
        dst.write(label)
    with pytest.raises(RSLabError, match="the label raster has the images' size but lies elsewhere on the map"):
        train_change_detector([ChangePair(before, after, str(moved))], [ChangePair(before, after, str(moved))],
                              str(tmp_path / "m.pt"), TrainChangeParams(**TINY))
    assert not (tmp_path / "m.pt").exists()
    plain = tmp_path / "cm.png"
    with rasterio.open(plain, "w", driver="PNG", width=label.shape[2], height=label.shape[1], count=1,
                       dtype="uint8") as dst:
        dst.write(label.astype("uint8"))
    assert check_pair(ChangePair(before, after, str(plain))) == (13, label.shape[1], label.shape[2])

    no_crs = tmp_path / "no_crs_cm.tif"  # placed where the images are, but without a CRS: say that, not "elsewhere"
    with rasterio.open(no_crs, "w", **dict(profile, crs=None)) as dst:
        dst.write(label)
    with pytest.raises(RSLabError, match="the label raster's file has no CRS .* write the images' CRS into it .*Assign Projection"):
        check_pair(ChangePair(before, after, str(no_crs)))


def test_an_after_image_or_label_off_the_before_grid_says_which_and_how_to_fix_it(shared_data, tmp_path):
    """Detection resamples an after image on another grid; training stopped on it with 'before, after and label
    rasters are not on one grid', naming neither the raster nor the fix (found from the dock's Train…)."""
    from rslab.core.change_data import check_pair

    root = shared_data / "change" / "landsat_nanjing"
    before, after = str(root / "Nanjing_t1_TM6b.tif"), str(root / "Nanjing_t2_TM6b.tif")
    label = str(root / "Nanjing_reference_0unl_1unch_2ch.tif")
    with rasterio.open(after) as src:
        profile, window = src.profile, rasterio.windows.Window(0, 0, 600, 600)
        cut = tmp_path / "after_cut.tif"
        with rasterio.open(cut, "w", **dict(profile, width=600, height=600,
                                            transform=src.window_transform(window))) as dst:
            dst.write(src.read(window=window))
    with pytest.raises(RSLabError, match=r"the after image \(600 x 600, EPSG:\d+\) is not on the before image's "
                                         r"grid .* warp the after image onto the before image's grid first"):
        check_pair(ChangePair(before, str(cut), label))
    with pytest.raises(RSLabError, match=r"the label raster is 600 x 600 pixels, the images \d+ x \d+"):
        check_pair(ChangePair(before, after, str(cut)))
