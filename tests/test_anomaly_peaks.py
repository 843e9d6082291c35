"""The strongest anomalies of a score raster (core/anomaly_peaks.py) against a whole-image reference."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from scipy import ndimage

from rslab.core import anomaly_peaks
from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
from rslab.core.anomaly_params import AnomalyParams
from rslab.core.anomaly_peaks import PEAK_COUNT, PEAK_LAYER, PEAK_SEPARATION, strongest_peaks, write_peaks
from rslab.core.errors import RSLabError


def whole_image_peaks(scores: np.ndarray, count: int, separation: int):
    """The definition, on the whole image at once: local maxima in a (2 s + 1) square, strongest first (ties:
    upper-left first), each taken unless within `separation` (both axes) of one taken before."""
    values = np.where(np.isfinite(scores), scores.astype(np.float64), -np.inf)
    highest = ndimage.maximum_filter(values, size=2 * separation + 1, mode="constant", cval=-np.inf)
    rows, cols = np.nonzero((values == highest) & np.isfinite(scores))
    order = sorted(range(len(rows)), key=lambda i: (-values[rows[i], cols[i]], rows[i], cols[i]))
    taken = []
    for i in order:
        r, c = int(rows[i]), int(cols[i])
        if all(max(abs(r - r2), abs(c - c2)) > separation for r2, c2, _ in taken):
            taken.append((r, c, float(values[r, c])))
            if len(taken) == count:
                break
    return taken


@pytest.fixture(scope="module")
def rx_scores(beach2, tmp_path_factory):
    """RX scores of ABU beach-2 (real scene), and its report."""
    folder = tmp_path_factory.mktemp("peaks")
    outputs = AnomalyOutputs(scores=str(folder / "rx.tif"), report=str(folder / "rx.json"))
    result = detect_anomalies(str(beach2[0]), outputs, AnomalyParams(method="rx"))
    return outputs.scores, result


def read_scores(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def as_tuples(peaks):
    return [(p.row, p.col, p.score) for p in peaks]


@pytest.mark.parametrize("count, separation", [(PEAK_COUNT, PEAK_SEPARATION), (30, 0), (30, 1), (3, 5), (30, 12)])
def test_peaks_read_by_small_windows_are_the_whole_image_definition(rx_scores, monkeypatch, count, separation):
    """16-pixel windows put many peaks beside a window's edge, and count 3 keeps few candidates between windows."""
    path, _ = rx_scores
    expected = whole_image_peaks(read_scores(path), count, separation)
    assert as_tuples(strongest_peaks(path, count, separation)) == expected
    monkeypatch.setattr(anomaly_peaks, "PEAK_TILE", 16)
    assert as_tuples(strongest_peaks(path, count, separation)) == expected


def test_every_run_reports_its_strongest_anomalies(rx_scores):
    path, result = rx_scores
    scores = read_scores(path)
    assert len(result.peaks) == PEAK_COUNT
    first = result.peaks[0]
    assert (first.row, first.col) == np.unravel_index(np.argmax(scores), scores.shape)
    assert first.score == pytest.approx(float(scores.max()), rel=1e-7)
    assert [p.score for p in result.peaks] == sorted((p.score for p in result.peaks), reverse=True)
    assert first.x is None and first.y is None  # beach-2 carries no georeferencing
    report = json.loads(open(result.outputs.report).read())
    assert report["peaks"][0] == {"row": first.row, "col": first.col, "score": first.score, "x": None, "y": None}
    assert len(report["peaks"]) == PEAK_COUNT


@pytest.mark.parametrize("transform", [Affine(2, 0, 500000, 0, -2, 4650000), Affine(0, 2, 500000, -2, 0, 4650000)],
                         ids=["north-up", "rotated"])
def test_peaks_carry_their_pixel_centres_in_the_rasters_crs(rx_scores, tmp_path, transform):
    path, _ = rx_scores
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    placed = tmp_path / "placed.tif"
    with rasterio.open(placed, "w", **dict(profile, crs="EPSG:32633", transform=transform)) as dst:
        dst.write(data)
    peaks = strongest_peaks(str(placed), 5)
    assert as_tuples(peaks) == as_tuples(strongest_peaks(path, 5))
    for peak in peaks:
        x, y = transform * (peak.col + 0.5, peak.row + 0.5)
        assert (peak.x, peak.y) == pytest.approx((x, y), abs=1e-6)


def test_nodata_ties_and_a_raster_with_fewer_peaks_than_asked(tmp_path):
    """Synthetic edge cases: NaN pixels are never listed (a NaN beside a peak does not hide it), a plateau is
    listed once at its upper-left pixel, and an image with two targets gives two peaks, not twenty."""
    scores = np.zeros((40, 50), np.float32)
    scores[10:13, 20:23] = 5.0  # a plateau: one target of 3 x 3 equal scores
    scores[30, 40] = 7.0
    scores[30, 41] = np.nan
    scores[0:5, :] = np.nan
    path = tmp_path / "synthetic.tif"
    profile = dict(driver="GTiff", width=50, height=40, count=1, dtype="float32", nodata=np.nan)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scores, 1)
    peaks = strongest_peaks(str(path), 20, 5)
    assert as_tuples(peaks[:2]) == [(30, 40, 7.0), (10, 20, 5.0)]
    assert all(p.score == 0 for p in peaks[2:])  # then the flat background, each zero more than 5 pixels apart
    assert all(p.row >= 5 for p in peaks) and len(peaks) == 20
    scores[:] = np.nan
    scores[20, 20] = 1.0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scores, 1)
    assert as_tuples(strongest_peaks(str(path), 20, 5)) == [(20, 20, 1.0)]
    with pytest.raises(ValueError):
        strongest_peaks(str(path), 0, 5)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_peaks_are_written_as_points_on_their_pixels(rx_scores, tmp_path, suffix):
    """In the raster's CRS at the pixel centres; on an unplaced raster where QGIS draws its pixels (y = -row)."""
    from osgeo import ogr

    path, _ = rx_scores
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    transform = Affine(2, 0, 500000, 0, -2, 4650000)
    placed = tmp_path / "placed.tif"
    with rasterio.open(placed, "w", **dict(profile, crs="EPSG:32633", transform=transform)) as dst:
        dst.write(data)
    for raster, where in ((str(placed), lambda p: transform * (p.col + 0.5, p.row + 0.5)),
                          (path, lambda p: (p.col + 0.5, -(p.row + 0.5)))):
        peaks = strongest_peaks(raster, 6)
        if raster == path and suffix == ".geojson":  # GeoJSON is longitude and latitude: not for an unplaced image
            with pytest.raises(RSLabError, match="this image has no CRS; give the file a .gpkg name"):
                write_peaks(str(tmp_path / "unplaced.geojson"), peaks, raster)
            assert not (tmp_path / "unplaced.geojson").exists()
            continue
        out = tmp_path / f"{'placed' if raster == str(placed) else 'unplaced'}{suffix}"
        write_peaks(str(out), peaks, raster)
        ds = ogr.Open(str(out))
        layer = ds.GetLayer(0)
        srs = layer.GetSpatialRef()
        assert layer.GetName() == PEAK_LAYER
        assert (srs.GetAuthorityCode(None) if srs is not None else None) == ("32633" if raster == str(placed) else None)
        features = list(layer)
        assert [(f["rank"], f["row"], f["col"], f["score"]) for f in features] == [
            (rank, p.row, p.col, p.score) for rank, p in enumerate(peaks, 1)]
        for feature, peak in zip(features, peaks):
            geometry = feature.GetGeometryRef()
            assert (geometry.GetX(), geometry.GetY()) == pytest.approx(where(peak), abs=1e-6)
        ds = None
    with pytest.raises(RSLabError, match="give the file a .gpkg or .geojson name"):
        write_peaks(str(tmp_path / "peaks.shp"), peaks, path)
    assert not (tmp_path / "peaks.shp").exists()
