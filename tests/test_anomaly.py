"""Hyperspectral anomaly detection in core on real ABU scenes: RX, local RX, BSDM + RX."""
from __future__ import annotations

import json
import os
import warnings
from collections import Counter

import numpy as np
import pytest
import rasterio
import scipy.io
import scipy.stats
import spectral
import torch

from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
from rslab.core.anomaly_mask import flagged_pixels
from rslab.core.anomaly_metrics import anomaly_roc
from rslab.core.anomaly_params import LRX_MAX_OUTER, METHODS, AnomalyParams
from rslab.core.bsdm_suppression import save_denoiser, train_bsdm, training_sample
from rslab.core.errors import RSLabError
from rslab.core.import_cube import import_cube
from rslab.core.local_rx import LRX_COMPONENTS, local_rx_tile, principal_components
from rslab.core.metrics import rank_auc, window_roc
from rslab.models.bsdm import BSDMDenoiser, pixel_statistics, schedule, suppress_background


def _scores(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_schedule_constants_and_denoiser_shapes():
    sqrt_abar, gamma = schedule(500)
    assert sqrt_abar == pytest.approx(0.279, abs=1e-3)
    assert gamma == pytest.approx(17.5, abs=0.05)
    torch.manual_seed(0)
    net = BSDMDenoiser(bands=12)
    x = torch.rand(64, 12)
    assert net(x, torch.tensor(500)).shape == (64, 12)
    assert net(x, torch.full((64,), 500)).shape == (64, 12)
    assert torch.allclose(net(x, torch.tensor(500)), net(x, torch.full((64,), 500)), atol=1e-6)
    assert suppress_background(net, x, rounds=2).shape == (64, 12)
    with torch.no_grad():  # pixels are denoised one by one: chunks of tokens give the same result (up to
        # the float rounding of other matrix-product kernels, which the 10 rounds amplify ~3.6^10 times)
        chunked, whole = suppress_background(net, x, chunk=10), suppress_background(net, x, chunk=64)
        assert (chunked - whole).abs().max() < 1e-5 * whole.abs().max()
    # precomputed per-pixel statistics (what training passes) give the same output as computing them inside
    assert torch.equal(net(x, torch.tensor(500), pixel_statistics(x)), net(x, torch.tensor(500)))
    assert torch.allclose(pixel_statistics(x)[:, 1], x.std(dim=1, unbiased=False))
    with pytest.raises(ValueError):
        BSDMDenoiser(bands=1)


def test_bsdm_training_stops_at_the_next_iteration_after_a_cancel(beach2):
    """Training looked for a cancel every tenth iteration only (5 s measured on a 1200 x 1200 mosaic's sample,
    up to ~20 s under load): a cancel asked at the third check now stops it there."""
    from rslab.core.errors import JobCancelled
    from rslab.core.job import JobMonitor

    cube, _ = beach2
    sample = training_sample(str(cube), *_cube_range(cube), 300, 100 * 100, 0)
    checks = []

    def cancelled():
        checks.append(1)
        return len(checks) >= 3

    with pytest.raises(JobCancelled):
        train_bsdm(sample, AnomalyParams(iterations=8, precision="float32"), torch.device("cpu"),
                   JobMonitor(cancelled=cancelled))
    assert len(checks) == 3


def test_each_suppression_round_is_methods_formula_on_real_pixels(samples):
    """x0_hat = (x - gamma eps_hat) / sqrt(abar) with x0_hat fed back (METHODS.md section 2), the constants
    computed here from the linear schedule, not by models/bsdm.py: a sign or a constant wrong in the rounds
    scored within RX's AUC on beach-2 (0.913 against 0.909), so only the arithmetic itself can show it."""
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas = 1 - betas
    sqrt_abar = np.sqrt(np.prod(alphas[:501]))  # abar_500 with t counted from 0, as METHODS' 0.279
    gamma = sum(np.sqrt(betas[i] * np.prod(alphas[i:500])) for i in range(500))
    assert sqrt_abar == pytest.approx(0.279, abs=1e-3) and gamma == pytest.approx(17.5, abs=0.01)
    cube = scipy.io.loadmat(samples / "abu-beach-2.mat")["data"].astype(np.float64)
    x = (cube - cube.min()) / (cube.max() - cube.min())  # one global min and max
    x = torch.from_numpy(x.reshape(-1, cube.shape[2])[::157].astype(np.float32))
    torch.manual_seed(0)
    net = BSDMDenoiser(bands=x.shape[1]).eval()
    with torch.no_grad():
        expected = x
        for _ in range(2):
            expected = (expected - float(gamma) * net(expected, torch.tensor(500))) / float(sqrt_abar)
        assert torch.allclose(suppress_background(net, x, rounds=2), expected, rtol=1e-4,
                              atol=1e-4 * float(expected.abs().max()))


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_the_denoisers_tanh_is_torch_tanh_within_float32_rounding(beach2):
    """Float32Tanh: 2 sigmoid(2x) - 1 in float32, with and without gradients, within float32 rounding of
    torch.tanh; torch.tanh itself in bfloat16 and when traced for export."""
    from rslab.models.layers import Float32Tanh

    with rasterio.open(beach2[0]) as ds:
        pixels = torch.from_numpy(ds.read().reshape(ds.count, -1).T.astype(np.float32))
    x = (pixels - pixels.mean()) / pixels.std() * 3  # real spectra spread over tanh's range
    act = Float32Tanh()
    with torch.inference_mode():
        fast = act(x)
    assert not torch.equal(fast, torch.tanh(x)) and (fast - torch.tanh(x)).abs().max() < 2e-7
    trained, reference = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = act(trained)
    assert torch.equal(out.detach(), fast)
    (out * x).sum().backward()
    (torch.tanh(reference) * x).sum().backward()
    assert (trained.grad - reference.grad).abs().max() < 5e-6  # |x| up to ~20: 1 - y^2 carries y's rounding
    with torch.inference_mode():
        assert torch.equal(act(x.bfloat16()), torch.tanh(x.bfloat16()))
    traced = torch.jit.trace(act, x[:4])
    assert "aten::tanh" in str(traced.graph) and "sigmoid" not in str(traced.graph)


def test_global_rx_matches_an_independent_implementation(tmp_path, beach2):
    cube, gt = beach2
    result = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s.tif")), AnomalyParams(method="rx"),
                              reference=str(gt))
    data = scipy.io.loadmat(os.path.join(os.path.dirname(__file__), "..", "resources", "samples", "abu-beach-2.mat"))
    cube_hwb = data["data"].astype(np.float64)  # (H, W, B), as the .mat stores it
    x = cube_hwb.reshape(-1, cube_hwb.shape[2])
    centred = x - x.mean(axis=0)
    plain = np.einsum("ij,jk,ik->i", centred, np.linalg.pinv(np.cov(centred, rowvar=False)), centred)
    spectral_rx = np.asarray(spectral.rx(cube_hwb), np.float64).ravel()  # Spectral Python's RX
    ours = _scores(tmp_path / "s.tif").ravel().astype(np.float64)
    for expected in (plain, spectral_rx):
        assert np.max(np.abs(ours - expected)) / expected.max() < 1e-6
    assert result.metrics["auc_df"] > 0.9  # RX finds the beach-2 targets well
    # METHODS.md: min-max normalise the scores, then the ROC areas. AUC(F,tau), the false-alarm rate integrated over
    # thresholds tau in [0, 1], is the background's mean normalised score; AUC(D,F) is the rank statistic.
    target = _scores(gt).ravel() > 0
    normalised = (ours - ours.min()) / (ours.max() - ours.min())
    u = scipy.stats.mannwhitneyu(ours[target], ours[~target]).statistic
    assert result.metrics["auc_df"] == pytest.approx(u / (target.sum() * (~target).sum()), abs=1e-9)
    assert result.metrics["auc_ftau"] == pytest.approx(normalised[~target].mean(), abs=1e-9)
    assert result.metrics["auc_bs"] == pytest.approx(result.metrics["auc_df"] - result.metrics["auc_ftau"])


def test_bsdm_rx_is_deterministic_under_a_seed(tmp_path, beach2):
    cube, gt = beach2
    params = AnomalyParams(method="bsdm_rx", iterations=15, seed=3)
    runs = []
    for i in range(2):
        out = tmp_path / f"s{i}.tif"
        result = detect_anomalies(str(cube), AnomalyOutputs(str(out)), params, reference=str(gt))
        runs.append(_scores(out))
    assert np.array_equal(runs[0], runs[1])
    assert len(result.training_loss) == 15 and result.training_loss[-1] < result.training_loss[0]
    other = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s9.tif")),
                             AnomalyParams(method="bsdm_rx", iterations=15, seed=4))
    assert not np.array_equal(_scores(tmp_path / "s9.tif"), runs[0])
    assert other.device.startswith(("cpu", "cuda"))


def test_a_seed_gives_the_same_denoiser_while_another_job_trains(beach2, tmp_path):
    """torch's global generator, which gives a network's initial weights, is shared by every thread of QGIS: a
    BSDM run beside another job that seeded and drew from it (another BSDM run, a training) or built a model
    from a checkpoint (the compression dock reading one) trained another denoiser from the same seed."""
    import threading

    from rslab.core.checkpoint import build_model, load_checkpoint
    from rslab.core.job import JobMonitor

    cube, _ = beach2
    sample = training_sample(str(cube), *_cube_range(cube), 300, 100 * 100, 0)
    cpu = torch.device("cpu")

    def weights(seed):
        model, _, _ = train_bsdm(sample, AnomalyParams(iterations=1, seed=seed, precision="float32"), cpu,
                                 JobMonitor())
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    alone = weights(0)
    stop = threading.Event()
    model, _, _ = train_bsdm(sample, AnomalyParams(iterations=1, seed=2, precision="float32"), cpu, JobMonitor())
    save_denoiser(model, str(tmp_path / "bsdm.pt"), str(cube), 0.0, 1.0, AnomalyParams())
    checkpoint = load_checkpoint(str(tmp_path / "bsdm.pt"))

    def other_job():
        while not stop.is_set():
            weights(1)
            build_model(checkpoint)

    thread = threading.Thread(target=other_job)
    thread.start()
    try:
        beside = [weights(0) for _ in range(8)]
    finally:
        stop.set()
        thread.join()
    assert all(torch.equal(w, alone) for w in beside)


def test_an_onnx_export_in_another_thread_does_not_change_the_denoisers_arithmetic(beach2):
    """torch's 'in ONNX export' flag is process-wide: while the Export dialog exported in its thread, the
    statistical-offset layer of a BSDM run in another took the exporter's literal form, and a seeded run's
    scores moved by up to 536. The layer now takes that form only while its own thread traces."""
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    cube, _ = beach2
    sample = torch.from_numpy(training_sample(str(cube), *_cube_range(cube), 500, 100 * 100, 0))
    torch.manual_seed(0)
    model = BSDMDenoiser(sample.shape[1]).eval()
    step = torch.tensor(500)
    with torch.no_grad():
        alone = model(sample, step)
        GLOBALS.in_onnx_export = True  # as another thread's export sets it
        try:
            beside = model(sample, step)
        finally:
            GLOBALS.in_onnx_export = False
    assert torch.equal(alone, beside)


def test_bfloat16_training_follows_float32_on_a_real_scene(beach2):
    """Training in bfloat16 (autocast; the default where the hardware has it) tracks float32 closely."""
    from rslab.core.device import native_bfloat16
    from rslab.core.job import JobMonitor

    cube, _ = beach2
    sample = training_sample(str(cube), *_cube_range(cube), 2000, 100 * 100, 0)
    cpu = torch.device("cpu")
    runs = {}
    for precision in ("float32", "bfloat16", "auto"):
        params = AnomalyParams(iterations=40, seed=2, precision=precision)
        model, losses, used = train_bsdm(sample, params, cpu, JobMonitor())
        runs[precision] = (model, losses, used)
    assert runs["float32"][2] == "float32" and runs["bfloat16"][2] == "bfloat16"
    assert runs["auto"][2] == ("bfloat16" if native_bfloat16(cpu) else "float32")
    full, low = np.array(runs["float32"][1]), np.array(runs["bfloat16"][1])
    assert full[-1] < 0.5 * full[0]  # it trains
    assert np.max(np.abs(low - full) / full) < 0.02  # and bfloat16 stays within 2 % of float32 at every iteration
    x = torch.from_numpy(sample[:500])
    with torch.inference_mode():
        a, b = (suppress_background(runs[p][0], x, rounds=1) for p in ("float32", "bfloat16"))
    assert torch.corrcoef(torch.stack([a.ravel(), b.ravel()]))[0, 1] > 0.99


def test_rx_and_metrics_count_every_pixel_once_on_an_image_of_several_windows(tmp_path, beach2):
    """300 x 300 is more than one 256-pixel window and not a multiple of it: the statistics, the scores and
    the metrics must still see each pixel once (the last windows once stepped back over their neighbours)."""
    from scipy.stats import rankdata

    with rasterio.open(beach2[0]) as src:
        cube, profile = src.read()[:40], src.profile  # 40 of the real bands keep the test light
    with rasterio.open(beach2[1]) as src:
        truth = src.read(1)
    turns = [(k % 4, k % 3 == 0) for k in range(9)]  # beach-2 turned and flipped: 3 x 3 real, distinct tiles

    def mosaic(a):
        rows = [np.concatenate([np.flip(np.rot90(a, t, axes=(-2, -1)), -1) if f else np.rot90(a, t, axes=(-2, -1))
                                for t, f in turns[3 * i:3 * i + 3]], axis=-1) for i in range(3)]
        return np.ascontiguousarray(np.concatenate(rows, axis=-2))

    big, big_truth = mosaic(cube), mosaic(truth)
    with rasterio.open(tmp_path / "cube.tif", "w", **dict(profile, width=300, height=300, count=40)) as dst:
        dst.write(big)
    with rasterio.open(tmp_path / "gt.tif", "w", driver="GTiff", width=300, height=300, count=1,
                       dtype="uint8") as dst:
        dst.write(big_truth.astype(np.uint8), 1)
    result = detect_anomalies(str(tmp_path / "cube.tif"), AnomalyOutputs(str(tmp_path / "s.tif")),
                              AnomalyParams(method="rx", false_alarm_rate=0.01), reference=str(tmp_path / "gt.tif"))
    x = big.reshape(40, -1).T.astype(np.float64)
    centred = x - x.mean(axis=0)
    expected = np.einsum("ij,jk,ik->i", centred, np.linalg.pinv(np.cov(centred, rowvar=False)), centred)
    ours = _scores(tmp_path / "s.tif").ravel().astype(np.float64)
    assert np.max(np.abs(ours - expected)) / expected.max() < 1e-6
    positive = big_truth.ravel() != 0
    ranks = rankdata(ours)
    exact = (ranks[positive].sum() - positive.sum() * (positive.sum() + 1) / 2) / (positive.sum() * (~positive).sum())
    assert result.metrics["anomaly_pixels"] == positive.sum() and result.metrics["background_pixels"] == (~positive).sum()
    assert result.metrics["auc_df"] == pytest.approx(exact, abs=1e-12)
    assert np.count_nonzero(ours > result.threshold) == 900  # 1 % of 90,000 pixels (no ties here)


def test_window_roc_is_the_rank_statistic_with_ties_and_any_split():
    """Ties count half, windows and the class kept in memory (positives, negatives, neither) change nothing."""
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 300))
        scores = rng.integers(0, rng.integers(1, 20), n) / 20.0  # few distinct values: many ties
        truth = rng.random(n) < rng.uniform(0.05, 0.95)
        if truth.all() or not truth.any():
            continue
        expected = mannwhitneyu(scores[truth], scores[~truth]).statistic / (truth.sum() * (~truth).sum())
        parts = np.array_split(np.arange(n), int(rng.integers(1, 5)))
        for limit in (n, int(truth.sum()) - 1, 0):  # positives kept (when fewer), negatives kept, histogram
            roc = window_roc(lambda: ((scores[p], truth[p]) for p in parts), limit=limit)
            assert roc.exact == (min(truth.sum(), (~truth).sum()) <= limit)
            if roc.exact:
                assert roc.auc == pytest.approx(expected, abs=1e-12)
            for rate in (roc.false_alarm, roc.detection):
                assert rate[0] == 0 and rate[-1] == 1 and np.all(np.diff(rate) >= 0)
            assert roc.negative_mean == pytest.approx(scores[~truth].mean())
            assert roc.positive_mean == pytest.approx(scores[truth].mean())
    assert window_roc(lambda: [(np.ones(3), np.zeros(3, bool))]) is None
    assert rank_auc(np.array([3.0, 1.0, 2.0, 2.0]), np.array([True, False, True, False])) == 0.875


def test_roc_of_perfect_and_reversed_scores(tmp_path):
    truth = np.zeros((60, 50), np.uint8)
    truth[10:14, 20:25] = 1
    profile = dict(driver="GTiff", width=50, height=60, count=1)
    paths = {}
    for name, data in (("truth", truth), ("good", truth * 5.0 + 1), ("bad", 6 - truth * 5.0)):
        paths[name] = str(tmp_path / f"{name}.tif")
        with rasterio.open(paths[name], "w", dtype=data.dtype, **profile) as ds:
            ds.write(data, 1)
    good = anomaly_roc(paths["good"], paths["truth"], 1.0, 6.0)
    assert good.auc == 1.0 and good.positives == 20 and good.negatives == 2980 and good.exact
    assert good.detection[good.false_alarm > 0].min() == 1.0  # every anomaly found before any false alarm
    bad = anomaly_roc(paths["bad"], paths["truth"], 1.0, 6.0)
    assert bad.auc == 0.0 and bad.detection[bad.false_alarm < 1].max() == 0.0
    for value, message in ((0, "no anomaly pixel"), (1, "every pixel")):
        with rasterio.open(paths["truth"], "w", dtype="uint8", **profile) as ds:
            ds.write(np.full_like(truth, value), 1)
        with pytest.raises(RSLabError, match=message):
            anomaly_roc(paths["good"], paths["truth"], 1.0, 6.0)


def test_heavy_tailed_scores_get_their_exact_auc(tmp_path, beach2):
    """Local RX's scores reach far above their median; a fixed binning used to put AUC(D,F) off by up to 2.4e-3."""
    from scipy.stats import rankdata

    cube, gt = beach2
    result = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s.tif")), AnomalyParams(method="lrx"),
                              reference=str(gt))
    scores, truth = _scores(tmp_path / "s.tif").ravel().astype(np.float64), _scores(gt).ravel() != 0
    ranks = rankdata(scores)
    exact = (ranks[truth].sum() - truth.sum() * (truth.sum() + 1) / 2) / (truth.sum() * (~truth).sum())
    assert result.metrics["auc_df"] == pytest.approx(exact, abs=1e-12)
    assert scores.max() > 100 * np.median(scores)  # the heavy tail
    roc = result.roc
    assert roc.exact and roc.positives == truth.sum() and len(roc.false_alarm) == len(roc.detection)
    assert "roc" not in result.report()


def _cube_range(path):
    with rasterio.open(path) as ds:
        data = ds.read()
    return float(data.min()), float(data.max())


def test_bsdm_trains_on_as_many_pixels_as_asked_when_much_of_the_scene_is_nodata(tmp_path, beach2):
    """The sample is drawn from the valid pixels: a scene 60 % nodata still gives `limit` of them, none of nodata."""
    with rasterio.open(beach2[0]) as src:
        cube, profile = src.read().astype(np.float32), src.profile
    cube[:, :, :60] = -9999.0  # the left 60 of 100 columns: nodata
    profile.update(dtype="float32", nodata=-9999.0)
    path = tmp_path / "partly_nodata.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(cube)
    valid = cube[:, :, 60:].reshape(cube.shape[0], -1).T  # 4000 valid pixels
    lo, hi = float(valid.min()), float(valid.max())
    sample = training_sample(str(path), lo, hi, 3000, len(valid), 0)
    assert sample.shape == (3000, cube.shape[0])
    # valid pixels only, each at most once (ABU scenes repeat some spectra: count them as a multiset)
    available = Counter(row.tobytes() for row in ((valid.astype(np.float64) - lo) / (hi - lo)).astype(np.float32))
    drawn = Counter(row.tobytes() for row in sample)
    assert all(available[key] >= count for key, count in drawn.items())
    everything = training_sample(str(path), lo, hi, 5000, len(valid), 0)
    assert len(everything) == len(valid)


def test_the_training_sample_is_the_same_however_the_file_is_stored(tmp_path, beach2):
    """A striped and a tiled copy of one image are read in different windows (full-width strips, 256 x 256
    squares): drawn window by window from one generator, the same seed gave them different training pixels
    (AUC 0.9032 against 0.9022 on a beach-2 mosaic). A 600 x 300 mosaic of beach-2, a sample of 5000."""
    from rslab.core.tiling import windows_for

    with rasterio.open(beach2[0]) as src:
        scene = src.read()
    mosaic = np.concatenate([np.concatenate([scene, scene[:, ::-1]] * 3, axis=2)] * 3, axis=1)
    lo, hi = float(mosaic.min()), float(mosaic.max())
    layouts = {"strips": {"blockysize": 8}, "tiles": {"tiled": True, "blockxsize": 256, "blockysize": 256}}
    samples = {}
    for name, layout in layouts.items():
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=600, height=300, count=len(mosaic),
                           dtype=mosaic.dtype, **layout) as dst:
            dst.write(mosaic)
        with rasterio.open(path) as ds:
            samples[name] = training_sample(str(path), lo, hi, 5000, 600 * 300, 3)
            layouts[name] = [tuple(w.flatten()) for w in windows_for(ds, 256)]
    assert layouts["strips"] != layouts["tiles"]  # the two are read in different windows
    assert samples["strips"].shape == (5000, len(mosaic))
    assert np.array_equal(samples["strips"], samples["tiles"])
    assert not np.array_equal(samples["strips"], training_sample(str(tmp_path / "tiles.tif"), lo, hi, 5000,
                                                                  600 * 300, 4))


def test_local_rx_and_false_alarm_mask(tmp_path, beach2):
    cube, gt = beach2
    outputs = AnomalyOutputs(str(tmp_path / "s.tif"), str(tmp_path / "m.tif"), str(tmp_path / "r.json"))
    result = detect_anomalies(str(cube), outputs, AnomalyParams(method="lrx", inner_window=3, outer_window=9,
                                                                false_alarm_rate=0.02), reference=str(gt))
    assert 0.5 < result.metrics["auc_df"] <= 1.0
    with rasterio.open(tmp_path / "m.tif") as ds:
        mask = ds.read(1)
        assert ds.nodata == 255
    scores, asked = _scores(tmp_path / "s.tif"), int(0.02 * mask.size)
    # the threshold is the (asked + 1)-th highest score: `asked` pixels flagged, fewer only where scores tie
    assert mask.sum() == np.count_nonzero(scores > result.threshold) <= asked < np.count_nonzero(scores >= result.threshold)
    assert mask.sum() >= asked - 2
    assert result.mask_pixels == mask.sum() and not result.notes
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mask_pixels"] == mask.sum()
    assert report["inputs"] == {"image": str(cube), "reference": str(gt), "denoiser": None}
    assert report["outputs"]["mask"] == str(tmp_path / "m.tif")
    # a rate too small for the image flags nothing, and the run says what rate would flag one pixel
    few = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s2.tif"), str(tmp_path / "m2.tif")),
                           AnomalyParams(method="rx", false_alarm_rate=5e-5))
    with rasterio.open(tmp_path / "m2.tif") as ds:
        assert ds.read(1).sum() == 0 == few.mask_pixels
    assert few.notes == ["a false-alarm rate of 5e-05 flags no pixel of these 10,000 "
                         "(it takes a rate of at least 1/10,000 = 0.0001 to flag one)"]
    # 20 identical odd pixels among 80 identical others: the 10 asked for cannot be told apart from the other 10
    tied = np.zeros((2, 10, 10), np.float32)
    tied[:, :2, :] = [[[1.0]], [[2.0]]]
    with rasterio.open(tmp_path / "tied.tif", "w", driver="GTiff", width=10, height=10, count=2,
                       dtype="float32") as dst:
        dst.write(tied)
    tie = detect_anomalies(str(tmp_path / "tied.tif"), AnomalyOutputs(str(tmp_path / "s3.tif")),
                           AnomalyParams(method="rx", false_alarm_rate=0.1))
    assert tie.mask_pixels == 0 and tie.notes == ["the highest scores tie, so no pixel scores above the cut: "
                                                  "the mask is empty"]


def test_local_rx_leaves_the_inner_guard_window_out_of_the_ring(beach2):
    """Each pixel against the mean and covariance of the ring between its outer and inner windows, recomputed
    pixel by pixel on four bands of a 15 x 15 crop of beach-2 (the whole image, at its edges)."""
    cube, _ = beach2
    with rasterio.open(cube) as src:
        pixels = src.read([10, 60, 110, 160], window=((40, 55), (40, 55))).astype(np.float64)
    inner, outer = 3, 7
    scores = local_rx_tile(pixels, np.ones(pixels.shape[1:], bool), inner, outer)
    for row, col in ((7, 7), (3, 10), (0, 0), (14, 5)):
        ring = [(r, c) for r in range(row - 3, row + 4) for c in range(col - 3, col + 4)
                if 0 <= r < 15 and 0 <= c < 15 and max(abs(r - row), abs(c - col)) > 1]
        background = np.array([pixels[:, r, c] for r, c in ring])
        cov = np.cov(background, rowvar=False, bias=True)
        cov += np.eye(4) * 1e-6 * np.trace(cov) / 4
        centred = pixels[:, row, col] - background.mean(axis=0)
        assert scores[row, col] == pytest.approx(centred @ np.linalg.solve(cov, centred), rel=1e-6)


def test_local_rx_with_an_outer_window_over_the_whole_image(tmp_path):
    """From every pixel the ring is then the rest of the image: the pixel against all others, and a note."""
    data = np.random.default_rng(1).random((4, 12, 12))
    path = tmp_path / "small.tif"
    with rasterio.open(path, "w", driver="GTiff", width=12, height=12, count=4, dtype="float64") as dst:
        dst.write(data)
    result = detect_anomalies(str(path), AnomalyOutputs(str(tmp_path / "s.tif")),
                              AnomalyParams(method="lrx", inner_window=1, outer_window=23))
    assert any("covers the whole 12 x 12 image" in note for note in result.notes)
    pixels = data.reshape(4, -1).T
    for index in (0, 77):  # a corner, an inner pixel: four bands are four components, RX is invariant to that rotation
        others = np.delete(pixels, index, axis=0)
        centred = pixels[index] - others.mean(axis=0)
        expected = centred @ np.linalg.solve(np.cov(others, rowvar=False, bias=True), centred)
        assert _scores(tmp_path / "s.tif").ravel()[index] == pytest.approx(expected, rel=1e-4)
    result = detect_anomalies(str(path), AnomalyOutputs(str(tmp_path / "s2.tif")),
                              AnomalyParams(method="lrx", inner_window=1, outer_window=21))
    assert not result.notes


def test_nodata_pixels_are_excluded_and_written_as_nodata(tmp_path, beach2):
    cube, _ = beach2
    with rasterio.open(cube) as src:
        data = src.read().astype(np.float32)
        profile = dict(src.profile, dtype="float32", nodata=float("nan"))
    data[:, :10, :10] = np.nan
    data[3, 60, 60] = np.inf  # one infinite band makes the pixel invalid too
    data[:, 70, 70] = -np.inf
    holed = tmp_path / "holed.tif"
    with rasterio.open(holed, "w", **profile) as dst:
        dst.write(data)
    for method in ("lrx", "bsdm_rx", "rx"):
        with warnings.catch_warnings():  # invalid pixels are left out before any arithmetic, not after
            warnings.simplefilter("error", RuntimeWarning)
            detect_anomalies(str(holed), AnomalyOutputs(str(tmp_path / f"{method}.tif")),
                             AnomalyParams(method=method, iterations=2))
        scores = _scores(tmp_path / f"{method}.tif")
        invalid = np.zeros(scores.shape, bool)
        invalid[:10, :10] = invalid[60, 60] = invalid[70, 70] = True
        assert np.isnan(scores[invalid]).all() and np.isfinite(scores[~invalid]).all(), method
    x = np.delete(data[:, 10:, :].reshape(data.shape[0], -1), [50 * data.shape[2] + 60, 60 * data.shape[2] + 70], axis=1)
    x = x.T.astype(np.float64)
    y = data[:, :10, 10:].reshape(data.shape[0], -1).T.astype(np.float64)
    valid = np.concatenate([x, y])
    centred = valid - valid.mean(axis=0)
    inverse = np.linalg.pinv(np.cov(centred, rowvar=False))
    one = data[:, 50, 50].astype(np.float64) - valid.mean(axis=0)
    assert scores[50, 50] == pytest.approx(one @ inverse @ one, rel=1e-4)


def test_infinite_values_raise_no_warnings(tmp_path):
    """A few bands: numpy's own matmul loop then reports inf - inf, which BLAS threads do not."""
    data = np.random.default_rng(0).random((4, 30, 30)).astype(np.float32)
    data[:, 5, 5] = np.inf
    data[1::2, 7, 9] = -np.inf
    path = tmp_path / "inf.tif"
    with rasterio.open(path, "w", driver="GTiff", width=30, height=30, count=4, dtype="float32") as dst:
        dst.write(data)
    for method in METHODS:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            detect_anomalies(str(path), AnomalyOutputs(str(tmp_path / f"{method}.tif")),
                             AnomalyParams(method=method, iterations=2, inner_window=1, outer_window=5))
        scores = _scores(tmp_path / f"{method}.tif")
        assert np.isnan(scores[5, 5]) and np.isnan(scores[7, 9]) and np.isfinite(scores).sum() == 898, method


def test_bad_inputs(tmp_path, beach2, samples):
    cube, gt = beach2
    out = tmp_path / "out"
    single = tmp_path / "single.tif"
    with rasterio.open(cube) as src:
        data = src.read()
        profile = src.profile
    with rasterio.open(single, "w", **dict(profile, count=1)) as dst:
        dst.write(data[:1])
    with pytest.raises(RSLabError, match="1 band"):
        detect_anomalies(str(single), AnomalyOutputs(str(out / "s.tif")), AnomalyParams(method="rx"))
    tiny = tmp_path / "tiny.tif"  # 25 pixels, 193 bands
    with rasterio.open(tiny, "w", **dict(profile, width=5, height=5)) as dst:
        dst.write(data[:, :5, :5])
    with pytest.raises(RSLabError, match="more pixels than bands"):
        detect_anomalies(str(tiny), AnomalyOutputs(str(out / "s.tif")), AnomalyParams(method="rx"))
    said = []  # BSDM + RX says so before training (it trained all its iterations first)
    with pytest.raises(RSLabError, match="more pixels than bands"):
        detect_anomalies(str(tiny), AnomalyOutputs(str(out / "s.tif")), AnomalyParams(method="bsdm_rx"),
                         progress=lambda fraction, text: said.append(text))
    assert not [text for text in said if text.startswith("BSDM iteration")]
    with pytest.raises(RSLabError, match="georeferencing"):
        detect_anomalies(str(cube), AnomalyOutputs(str(out / "s.tif")), AnomalyParams(method="rx"),
                         reference=str(samples / "rasterio_RGB.byte.tif"))
    with pytest.raises(RSLabError, match="false-alarm rate"):
        detect_anomalies(str(cube), AnomalyOutputs(str(out / "s.tif"), str(out / "m.tif")), AnomalyParams(method="rx"))
    for bad in (dict(method="svm"), dict(inner_window=4), dict(inner_window=9, outer_window=5),
                dict(false_alarm_rate=1.5), dict(iterations=0), dict(precision="float16")):
        with pytest.raises(RSLabError):
            AnomalyParams(**bad)
    assert not out.exists()


def test_bsdm_rx_without_disk_room_for_its_suppressed_cube_stops_before_training(tmp_path, beach2, monkeypatch):
    from rslab.core import outputs

    real = outputs.shutil.disk_usage
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: real(path)._replace(free=10**6))  # 1 MB free
    cube, _ = beach2
    out, messages = tmp_path / "out", []
    with pytest.raises(RSLabError, match=r"bsdm_rx on this 100 x 100 x 193 image needs up to 76 MB of temporary "
                                         r"disk space \(1 MB free in .*; 1 MB free in .*out\)"):
        detect_anomalies(str(cube), AnomalyOutputs(str(out / "scores.tif")), AnomalyParams(iterations=500),
                         progress=lambda fraction, message: messages.append(message))
    assert not any("BSDM" in m for m in messages) and not out.exists()
    # RX writes no work files: it runs on the same full disk
    result = detect_anomalies(str(cube), AnomalyOutputs(str(out / "rx.tif")), AnomalyParams(method="rx"))
    assert os.path.exists(result.outputs.scores)


def test_constant_bands_do_not_break_rx(tmp_path, beach2):
    cube, gt = beach2
    with rasterio.open(cube) as src:
        data = src.read()
        profile = src.profile
    data[5] = 7  # a dead band: singular covariance
    data[6] = data[7]  # and two identical bands
    path = tmp_path / "singular.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    result = detect_anomalies(str(path), AnomalyOutputs(str(tmp_path / "s.tif")), AnomalyParams(method="rx"),
                              reference=str(gt))
    assert np.isfinite(_scores(tmp_path / "s.tif")).all()
    assert result.metrics["auc_df"] > 0.9


def test_trained_denoiser_is_saved_and_reused(tmp_path, beach2):
    """OUTPUT_MODEL saves the scene's denoiser; MODEL reuses it without training and gives the same scores."""
    cube, gt = beach2
    params = AnomalyParams(method="bsdm_rx", iterations=10, seed=1)
    first = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "a.tif"), model=str(tmp_path / "bsdm.pt")),
                             params, reference=str(gt))
    from rslab.core.checkpoint import read_card

    card = read_card(str(tmp_path / "bsdm.pt"))
    assert card.task == "anomaly_detection" and card.arguments["bands"] == first.bands
    # the scores are global RX on the cube after METHODS.md's ten suppression rounds, recomputed here in memory
    from rslab.core.checkpoint import build_model, load_checkpoint
    from rslab.core.rx import global_rx

    model = build_model(load_checkpoint(str(tmp_path / "bsdm.pt"))).eval()
    lo, hi = card.normalisation["min"][0], card.normalisation["max"][0]
    with rasterio.open(cube) as ds:
        pixels = ds.read().reshape(first.bands, -1).T.astype(np.float64)
    with torch.inference_mode():
        suppressed = suppress_background(model, torch.from_numpy(((pixels - lo) / (hi - lo)).astype(np.float32)),
                                         rounds=10)
    expected = global_rx(suppressed.double().numpy())
    assert np.allclose(_scores(tmp_path / "a.tif").ravel(), expected, rtol=1e-4)
    again = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "b.tif")),
                             AnomalyParams(method="bsdm_rx", model=str(tmp_path / "bsdm.pt")), reference=str(gt))
    read_note = "BSDM denoiser read from bsdm.pt (trained on a scene of this file's name)"  # its own scene
    assert again.training_loss == [] and read_note in again.notes, again.notes
    assert "iterations" not in again.params and again.params["model"].endswith("bsdm.pt")  # nothing was trained
    assert np.allclose(_scores(tmp_path / "a.tif"), _scores(tmp_path / "b.tif"), rtol=1e-5)
    with pytest.raises(RSLabError, match="only used by bsdm_rx"):
        AnomalyParams(method="rx", model=str(tmp_path / "bsdm.pt"))
    with pytest.raises(RSLabError, match="nothing is trained when a denoiser is given"):
        detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "c.tif"), model=str(tmp_path / "copy.pt")),
                         AnomalyParams(method="bsdm_rx", model=str(tmp_path / "bsdm.pt")))
    assert not (tmp_path / "copy.pt").exists()
    with pytest.raises(RSLabError, match="only bsdm_rx trains"):
        detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "c.tif"), model=str(tmp_path / "m.pt")),
                         AnomalyParams(method="rx"))
    assert not (tmp_path / "c.tif").exists() and not (tmp_path / "m.pt").exists()


def test_bsdm_denoiser_compresses_and_runs_compressed(tmp_path, beach2, samples):
    """Both compression methods take the BSDM denoiser (scored on the ABU .mat); the result runs in detect_anomalies."""
    from rslab.core.checkpoint import build_model, load_checkpoint, read_card
    from rslab.core.compression import CompressParams, compress_checkpoint
    from rslab.core.compression_tasks import task_for

    cube, gt = beach2
    detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "a.tif"), model=str(tmp_path / "bsdm.pt")),
                     AnomalyParams(method="bsdm_rx", iterations=5))
    for method in ("pic_pq", "ghost"):
        params = CompressParams(method=method, flops_reduction=0.0, max_bits=(8,), epochs=0.02, generations=1,
                                batch_size=128)
        result = compress_checkpoint(str(tmp_path / "bsdm.pt"), str(samples / "abu-beach-2.mat"),
                                     str(tmp_path / f"{method}.pt"), params)
        assert result.metric == "auc" and result.bops_ratio >= 10 and 0 < result.scores_after["auc"] <= 100
        assert read_card(str(tmp_path / f"{method}.pt")).bit_widths
        # the reported score is the saved model's: rebuilt from the packed checkpoint, it scores the same
        saved = load_checkpoint(str(tmp_path / f"{method}.pt"))
        rescored = task_for(saved, str(samples / "abu-beach-2.mat")).evaluate(build_model(saved))
        assert rescored["auc"] == pytest.approx(result.scores_after["auc"], abs=0.01)
    run = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "q.tif")),
                           AnomalyParams(method="bsdm_rx", model=str(tmp_path / "pic_pq.pt")), reference=str(gt))
    assert run.metrics["auc_df"] > 0.5 and np.isfinite(_scores(tmp_path / "q.tif")).all()
    with pytest.raises(RSLabError, match="FLOPs reduction to 0"):
        compress_checkpoint(str(tmp_path / "bsdm.pt"), str(samples / "abu-beach-2.mat"), str(tmp_path / "p.pt"),
                            CompressParams(method="pic_pq", flops_reduction=0.3, epochs=0.02, batch_size=128))
    assert not (tmp_path / "p.pt").exists()


def test_no_output_replaces_the_denoiser_read(tmp_path, beach2):
    """A report named as the MODEL it read replaced the denoiser with JSON."""
    cube, _ = beach2
    model = tmp_path / "den.pt"
    model.write_bytes(b"a denoiser")
    for outputs in (AnomalyOutputs(str(tmp_path / "s.tif"), report=str(model)),
                    AnomalyOutputs(str(tmp_path / "s.tif"), model=str(model))):
        with pytest.raises(RSLabError, match="would replace the denoiser read"):
            detect_anomalies(str(cube), outputs, AnomalyParams(method="bsdm_rx", model=str(model)))
    assert model.read_bytes() == b"a denoiser" and not (tmp_path / "s.tif").exists()


def test_a_denoiser_saved_by_detection_compresses_on_its_own_scene(tmp_path, beach2, samples):
    """Compression read the scene with every band and pixel: a scene with NaN nodata scored NaN and failed as
    'diverged', and an ENVI scene with bad bands (bbl) did not match the denoiser detection saved from it."""
    from rslab.core.checkpoint import build_model, load_checkpoint
    from rslab.core.compression import CompressParams, compress_checkpoint
    from rslab.core.compression_tasks import task_for

    cube, _ = beach2

    def with_nan(data):
        data = data.astype(np.float32)
        data[:, :, :3] = np.nan
        return data

    nan_scene = _copy(cube, tmp_path / "nan.tif", with_nan, "float32", float("nan"))
    with rasterio.open(cube) as src:
        data = src.read()
    envi = str(tmp_path / "scene.img")
    with rasterio.open(envi, "w", driver="ENVI", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype) as dst:
        dst.write(data)
    flags = ["1"] * data.shape[0]
    flags[5] = flags[6] = "0"
    with open(tmp_path / "scene.hdr", "a") as header:
        header.write("bbl = {" + ", ".join(flags) + "}\n")
    # an ABU-style .mat whose band 51 is NaN everywhere: detection (on its import) leaves the band out, so must
    # compression reading the .mat itself (it found 'no valid pixel')
    mat = scipy.io.loadmat(samples / "abu-beach-2.mat")
    mat["data"] = mat["data"].astype(np.float32)
    mat["data"][:, :, 50] = np.nan
    scipy.io.savemat(tmp_path / "nan_band.mat", {"data": mat["data"], "map": mat["map"]})
    import_cube(str(tmp_path / "nan_band.mat"), str(tmp_path / "nan_band.tif"))
    for scene, pixels, bands, detect_on in ((nan_scene, 100 * 97, data.shape[0], nan_scene),
                                            (envi, 100 * 100, data.shape[0] - 2, envi),
                                            (str(tmp_path / "nan_band.mat"), 100 * 100, data.shape[0] - 1,
                                             str(tmp_path / "nan_band.tif"))):
        model = str(tmp_path / f"{os.path.basename(scene)}.pt")
        detect_anomalies(detect_on, AnomalyOutputs(str(tmp_path / f"{os.path.basename(scene)}_s.tif"), model=model),
                         AnomalyParams(method="bsdm_rx", iterations=3))
        checkpoint = load_checkpoint(model)
        task = task_for(checkpoint, scene)
        assert tuple(task.x.shape) == (pixels, bands) and torch.isfinite(task.x).all()
        assert float(task.x.min()) == 0.0 and float(task.x.max()) == 1.0
        assert np.isfinite(task.evaluate(build_model(checkpoint))["loss"])
        result = compress_checkpoint(model, scene, str(tmp_path / f"{os.path.basename(scene)}_small.pt"),
                                     CompressParams(method="pic_pq", flops_reduction=0.0, max_bits=(8,), epochs=0.01,
                                                    generations=1, batch_size=128))
        assert np.isfinite(result.scores_after["loss"])


def test_rx_says_when_the_covariance_rests_on_few_pixels_per_band(tmp_path, shared_data, beach2):
    """A 20 x 20 m NEON plot with 369 bands (IDTReeS): 400 pixels, 1.1 per band; the run says the scores are noisy."""
    plot = shared_data / "classification" / "idtrees" / "HSI" / "MLBS_1.tif"
    result = detect_anomalies(str(plot), AnomalyOutputs(str(tmp_path / "s.tif")), AnomalyParams(method="rx"))
    assert [n for n in result.notes if "369 bands rests on 400 valid pixels (1.1 per band" in n]
    assert np.isfinite(_scores(tmp_path / "s.tif")).all()
    cube, _ = beach2  # 10,000 pixels for 193 bands: nothing to say
    assert not detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "b.tif")), AnomalyParams(method="rx")).notes


def _copy(cube, path, transform=lambda a: a, dtype=None, nodata=None):
    """A copy of a raster with its pixels mapped by `transform` (same grid), as `dtype`, with `nodata`."""
    with rasterio.open(cube) as src:
        data = transform(src.read())
        profile = dict(src.profile, dtype=dtype or data.dtype.name, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(profile["dtype"]))
    return str(path)


def test_a_false_alarm_rate_flags_floor_of_its_decimal_product(tmp_path, beach2):
    """0.0006 x 10,000 is 5.999999999999999 in binary: six pixels, not five."""
    assert flagged_pixels(0.0003, 10_000) == 3 and flagged_pixels(0.00029, 10_000) == 2
    assert flagged_pixels(0.5, 3) == 1 and flagged_pixels(1e-5, 10_000) == 0
    cube, _ = beach2
    result = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s.tif"), str(tmp_path / "m.tif")),
                              AnomalyParams(method="rx", false_alarm_rate=0.0006))  # no tie at the 6th score
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert result.mask_pixels == 6 == int((ds.read(1) == 1).sum())


def test_a_reference_with_nodata_0_reads_its_zeros_as_background(tmp_path, beach2):
    cube, gt = beach2
    plain = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "a.tif")), AnomalyParams(method="rx"),
                             reference=str(gt))
    marked = _copy(gt, tmp_path / "gt0.tif", nodata=0)  # as a GIS tool leaves a 0/1 mask for transparency
    result = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "b.tif")), AnomalyParams(method="rx"),
                              reference=marked)
    assert result.metrics == plain.metrics
    assert result.metrics["anomaly_pixels"] + result.metrics["background_pixels"] == 10_000
    assert [n for n in result.notes if "nodata value is 0; its 0 pixels are read as background" in n]


def test_a_reference_without_both_classes_fails_before_any_training(tmp_path, beach2):
    cube, gt = beach2
    out, messages = tmp_path / "out", []
    for name, fill, message in (("none.tif", 0, "marks no anomaly pixel"), ("all.tif", 1, "every pixel as an anomaly")):
        reference = _copy(gt, tmp_path / name, lambda a: np.full_like(a, fill))
        with pytest.raises(RSLabError, match=message):
            detect_anomalies(str(cube), AnomalyOutputs(str(out / "s.tif")), AnomalyParams(iterations=500),
                             reference=reference, progress=lambda fraction, text: messages.append(text))
    assert not any("BSDM" in m for m in messages) and not out.exists()


def test_a_cancel_after_the_outputs_are_in_place_does_not_fail_the_run(tmp_path, beach2):
    """The last progress report comes after the outputs are renamed into place: too late to undo them."""
    cube, _ = beach2
    report = tmp_path / "r.json"
    result = detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s.tif"), report=str(report)),
                              AnomalyParams(method="rx"), cancelled=report.exists)
    assert result.outputs.report == str(report) and report.exists()


def test_bsdm_normalises_in_float64_so_an_offset_image_scores_as_the_original(tmp_path, beach2):
    """beach-2 plus 10^8 as int32 (float32 steps of 8 there): the same scores as beach-2, training and inference."""
    cube, _ = beach2
    shifted = _copy(cube, tmp_path / "shifted.tif", lambda a: a.astype(np.int64) + 10**8, "int32")
    params = AnomalyParams(method="bsdm_rx", iterations=2)
    detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "a.tif")), params)
    detect_anomalies(shifted, AnomalyOutputs(str(tmp_path / "b.tif")), params)
    a, b = _scores(tmp_path / "a.tif"), _scores(tmp_path / "b.tif")
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4 * a.max())


def test_local_rx_tiles_overlap_by_the_window_not_by_one_pixel_steps(tmp_path, beach2):
    """A 1 x 700 strip of beach-2's spectra with a 255-pixel outer window: a few tiles, each pixel scored as on
    the whole strip at once (the fixed 256-pixel tiles of before stepped by one pixel: 445 tiles)."""
    cube, _ = beach2
    with rasterio.open(cube) as src:
        data = src.read()[:, :7, :].reshape(src.count, 1, 700)
        profile = dict(src.profile, width=700, height=1)
    strip = tmp_path / "strip.tif"
    with rasterio.open(strip, "w", **profile) as dst:
        dst.write(data)
    messages = []
    params = AnomalyParams(method="lrx", inner_window=5, outer_window=LRX_MAX_OUTER)
    detect_anomalies(str(strip), AnomalyOutputs(str(tmp_path / "s.tif")), params,
                     progress=lambda fraction, text: messages.append(text))
    tiles = {m for m in messages if m.startswith("tile ")}
    assert tiles and all(m.endswith(" of 2") for m in tiles)
    pixels = data.reshape(data.shape[0], -1).T.astype(np.float64)
    mean = pixels.mean(axis=0)
    basis, variances = principal_components(np.cov(pixels, rowvar=False), LRX_COMPONENTS)
    projected = ((pixels - mean) @ basis).T.reshape(LRX_COMPONENTS, 1, 700)
    whole = local_rx_tile(projected, np.ones((1, 700), bool), 5, LRX_MAX_OUTER, np.diag(variances))
    assert np.allclose(_scores(tmp_path / "s.tif"), whole, rtol=1e-4)
    with pytest.raises(RSLabError, match=f"outer window can be at most {LRX_MAX_OUTER} pixels, got 257"):
        AnomalyParams(method="lrx", outer_window=257)


def test_scores_of_a_cube_placed_by_ground_control_points_carry_the_points(tmp_path, beach2):
    """No geotransform, four GCPs in UTM 33N: the scores (and mask) keep the points, so QGIS places them alike."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    cube, _ = beach2
    points = [GroundControlPoint(row, col, 500_000 + col, 4_000_000 - row) for row, col in
              ((0, 0), (0, 100), (100, 0), (100, 100))]
    placed = tmp_path / "gcp.tif"
    with rasterio.open(cube) as src:
        profile = dict(src.profile, gcps=points, crs=CRS.from_epsg(32633))
        profile.pop("transform", None)
        with rasterio.open(placed, "w", **profile) as dst:
            dst.write(src.read())
    detect_anomalies(str(placed), AnomalyOutputs(str(tmp_path / "s.tif"), str(tmp_path / "m.tif")),
                     AnomalyParams(method="rx", false_alarm_rate=0.01))
    for name in ("s.tif", "m.tif"):
        with rasterio.open(tmp_path / name) as ds:
            gcps, crs = ds.gcps
            assert crs == CRS.from_epsg(32633) and [(p.row, p.col, p.x, p.y) for p in gcps] == \
                [(p.row, p.col, p.x, p.y) for p in points]


@pytest.mark.parametrize("nodata", [None, 0])
def test_a_reference_covering_part_of_the_cube_scores_only_there(tmp_path, beach2, nodata):
    """beach-2 placed in UTM 33N and its reference cut to the left 60 columns (a smaller grid): resampled onto the
    cube's grid, the rest is outside it and neither anomaly nor background (it was read as background).
    With nodata 0 on the 0/1 reference (a GIS tool's transparent background) its 0s are still background:
    the warp had made them nodata, and the run stopped at 'every pixel an anomaly'."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    cube, gt = beach2
    placed = dict(crs=CRS.from_epsg(32633), transform=from_origin(500_000, 4_000_000, 1, 1))
    with rasterio.open(cube) as src:
        with rasterio.open(tmp_path / "cube.tif", "w", **dict(src.profile, **placed)) as dst:
            dst.write(src.read())
    with rasterio.open(gt) as src:
        left = src.read(1, window=Window(0, 0, 60, src.height))
        profile = dict(src.profile, width=60, nodata=nodata, **placed)
        with rasterio.open(tmp_path / "gt_left.tif", "w", **profile) as dst:
            dst.write(left, 1)
    result = detect_anomalies(str(tmp_path / "cube.tif"), AnomalyOutputs(str(tmp_path / "s.tif")),
                              AnomalyParams(method="rx"), reference=str(tmp_path / "gt_left.tif"))
    assert result.metrics["anomaly_pixels"] == int((left != 0).sum()) > 0
    assert result.metrics["background_pixels"] == int((left == 0).sum())


@pytest.mark.parametrize("method", ["rx", "lrx"])
def test_the_last_passes_report_progress_and_stop_on_cancel(tmp_path, beach2, method):
    """The score range, the ROC against the reference and the false-alarm threshold read the whole score raster
    once to three times after scoring without a progress report or a cancel check (a pause nobody could stop on
    a large image)."""
    from rslab.core.errors import JobCancelled

    cube, gt = beach2
    seen = []
    detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s.tif"), str(tmp_path / "m.tif")),
                     AnomalyParams(method=method, false_alarm_rate=0.01), reference=str(gt),
                     progress=lambda fraction, text: seen.append((fraction, text)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    phases = ("value range", "comparing the scores with the reference", "the false-alarm threshold",
              "the mask against the reference")
    assert set(phases) <= {text for _, text in seen}
    for phase in phases:
        asked = []
        with pytest.raises(JobCancelled):
            detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "c.tif"), str(tmp_path / "cm.tif")),
                             AnomalyParams(method=method, false_alarm_rate=0.01), reference=str(gt),
                             progress=lambda fraction, text: asked.append(text), cancelled=lambda: phase in asked)
        assert not (tmp_path / "c.tif").exists() and not (tmp_path / "cm.tif").exists()


def test_bsdm_reads_before_training_with_progress_and_cancel(tmp_path, beach2):
    """BSDM's value range and training sample read the whole cube before the first training step with no
    progress report and no cancel check: on a 2000 x 2000 x 205 cube 20 s at 0 % in which Cancel did nothing."""
    from rslab.core.errors import JobCancelled

    cube, _ = beach2
    seen = []
    detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s.tif")), AnomalyParams(iterations=3),
                     progress=lambda fraction, text: seen.append((fraction, text)))
    texts = [text for _, text in seen]
    first_step = texts.index("BSDM iteration 1 of 3")
    assert "value range" in texts[:first_step] and "drawing the training pixels" in texts[:first_step]
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for phase in ("value range", "drawing the training pixels"):
        asked = []
        with pytest.raises(JobCancelled):
            detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "c.tif")), AnomalyParams(iterations=3),
                             progress=lambda fraction, text: asked.append(text), cancelled=lambda: phase in asked)
        assert "BSDM iteration 1 of 3" not in asked and not (tmp_path / "c.tif").exists()


def test_bsdm_progress_follows_where_the_time_goes():
    """Training costs the same on any image (a sample of at most 20,000 pixels), the suppression grows with it:
    a fixed 60 % / 15 % split left a 2000 x 2000 run creeping through 15 % of the bar for most of its time. The
    passes after training share the bar by their cost too: at a fixed 15 %, a 150 x 150 scene's last 3 s read
    'about 50 s left'."""
    from rslab.core.anomaly import stage_bounds

    def shares(pixels, iterations=500, **options):
        bounds = stage_bounds(pixels, min(20000, pixels), iterations, 10, **options)
        assert bounds[0][0] == 0.0 and bounds[-1][1] == pytest.approx(1.0)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        return [end - start for start, end in bounds]

    small, medium, large = shares(100 * 100), shares(1000 * 1000), shares(2000 * 2000)
    assert len(small) == 6 and small[1] > 0.95 and sum(small[3:]) < 0.01  # a 100 x 100 scene: training is nearly all
    assert 0.4 < medium[2] / (medium[1] + medium[2]) < 0.6  # 132 s training, 117 s suppression measured
    assert large[2] > 0.7 and shares(2000 * 2000, iterations=5)[2] > 0.9
    no_training = stage_bounds(10000, 10000, 500, 10, trains=False)[1]  # a denoiser read from a checkpoint
    assert no_training == (pytest.approx(0.4 / 10.9), pytest.approx(0.4 / 10.9))
    assert shares(10000, method="rx") == pytest.approx([0.4, 0.4, 0.2])  # RX: statistics, scores, the rest
    assert shares(10000, method="lrx") == pytest.approx([0.0, 0.95, 0.05])  # local RX: its scoring is the time


def test_the_suppression_reports_progress_and_stops_on_cancel_within_a_window(tmp_path, beach2):
    """The suppression checked for cancel once per window: one window of a 2000 x 2000 x 205 cube took 19 s,
    which a cancel waited out, with the bar standing still."""
    from rslab.core.errors import JobCancelled

    cube, _ = beach2  # one window of 10,000 pixels: three chunks of 4096
    seen = []
    detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "s.tif")), AnomalyParams(iterations=2),
                     progress=lambda fraction, text: seen.append((fraction, text)))
    inside = [f for f, text in seen if text == "suppressing the background: window 1 of 1"]
    assert len(inside) == 3 and inside == sorted(inside) and inside[0] < inside[-1]
    asked = []
    with pytest.raises(JobCancelled):
        detect_anomalies(str(cube), AnomalyOutputs(str(tmp_path / "c.tif")), AnomalyParams(iterations=2),
                         progress=lambda fraction, text: asked.append(text),
                         cancelled=lambda: asked.count("suppressing the background: window 1 of 1") >= 2)
    assert asked.count("suppressing the background: window 1 of 1") == 2  # stopped inside the window
    assert not (tmp_path / "c.tif").exists()
