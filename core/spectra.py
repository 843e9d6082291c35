"""Spectra to look at: one pixel's values across the bands, and a scene's mean spectrum.

What the anomaly dock plots when an analyst picks a pixel or an anomaly:
the pixel beside the scene mean, with gaps at the bands detection leaves out
(core/bands.py), against wavelength where the file gives it.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np
from rasterio.windows import Window

from .bands import bad_bands, good_bands
from .job import JobMonitor
from .raster_io import band_wavelengths, data_bands, gdal_env, open_raster, read_bands
from .rx import valid_summary


def scene_mean(cube: str, monitor: JobMonitor) -> np.ndarray:
    """The scene mean spectrum of `cube` over the pixels detection scores (valid in its good bands, by
    windows), with gaps at the bands detection leaves out (core/bands.good_bands: flagged bad, or empty)."""
    good, count, _ = good_bands(cube, monitor.check)
    with gdal_env(), open_raster(cube) as ds:
        position = {band: i for i, band in enumerate(data_bands(ds))}  # file band numbers: an alpha may lead
    mean = np.full(count, np.nan)
    mean[[position[band] for band in good]] = valid_summary(cube, monitor, good).mean
    return mean


def mean_spectrum_job(cube: str) -> Callable[[Callable[[float, str], None], Callable[[], bool]], np.ndarray]:
    """A job (progress, cancelled) -> the scene mean spectrum of `cube`, by windows."""
    return lambda progress, cancelled: scene_mean(cube, JobMonitor(progress, cancelled))


def gap_bad_bands(values: np.ndarray, path: str) -> np.ndarray:
    """`values` (one per band) with NaN at the bands the file's ENVI header flags bad (core/bands.py):
    the spectrum plot leaves gaps there, as the detectors leave those bands out."""
    bad = bad_bands(path)
    if not bad:
        return values
    values = values.astype(np.float64, copy=True)
    values[np.asarray(bad) - 1] = np.nan
    return values


def pixel_values(ds: Any, row: int, col: int) -> Optional[np.ndarray]:
    """One pixel's values (data bands of the open raster) with NaN at the bands where it is nodata (or NaN);
    None when every band is."""
    window = Window(col, row, 1, 1)
    bands = data_bands(ds)
    values = read_bands(ds, bands, window=window)[:, 0, 0].astype(np.float64)
    valid = (ds.read_masks(bands, window=window)[:, 0, 0] > 0) & np.isfinite(values)
    if not valid.any():
        return None
    values[~valid] = np.nan  # a gap in the plot: a band all nodata pressed the rest of the spectrum flat
    return values


def read_pixel(path: str, row: int, col: int) -> Optional[np.ndarray]:
    """The values (data bands) of one pixel, or None where the pixel is nodata."""
    with gdal_env(), open_raster(path) as ds:
        return pixel_values(ds, row, col)


def read_spectrum(path: str, row: int, col: int) -> Optional[Tuple[np.ndarray, np.ndarray, str]]:
    """One pixel's spectrum with the plot's x values and axis title (None where the pixel is nodata).

    x is the bands' wavelengths where the file has them (both come from the
    same data bands, so they pair one to one), else the band numbers.
    """
    with gdal_env(), open_raster(path) as ds:
        spectrum = pixel_values(ds, row, col)
        wavelengths = band_wavelengths(ds) if spectrum is not None else None
    if spectrum is None:
        return None
    spectrum = gap_bad_bands(spectrum, path)
    if wavelengths is not None:
        values, unit = wavelengths
        return spectrum, values, f"wavelength ({unit})" if unit else "wavelength"
    return spectrum, np.arange(1, len(spectrum) + 1, dtype=np.float64), "band"
