"""Opening rasters with clear errors, describing them, and output profiles.

Every job opens its inputs through `open_raster`, so a missing file, a file
GDAL cannot read, or an empty raster gives the same actionable RSLabError
everywhere. Non-georeferenced images (PNG, plain TIFF) are supported: their
outputs are written without a geotransform so that QGIS places them exactly
where it places the input.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from .device import cpu_threads
from .errors import RSLabError
from .outputs import PARTIAL_PREFIX, write_failed
from .shared_setting import SharedSetting

# GDAL's block cache defaults to 5 % of RAM; windowed jobs need far less, and
# a big cache would hide whether memory really stays bounded.
GDAL_CACHE_MB = 256


# Images without georeferencing (PNGs, ABU cubes) are normal input: rasterio's warning about them is
# filtered once for the process. warnings.catch_warnings() around each read swapped the process-wide filter
# list from worker threads: two jobs at once left the filter on for the console and other plugins anyway,
# or took it off under a running job.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


def _cache_max() -> int:
    from osgeo import gdal

    return gdal.GetCacheMax()


def _set_cache_max(size: int) -> None:
    from osgeo import gdal

    gdal.SetCacheMax(size)


# GDAL's block cache size is one for the whole process, QGIS's map included: the jobs running at once share one
# bound (rasterio.Env(GDAL_CACHEMAX=...) put back, per job, the size it had found: two jobs that overlapped left
# QGIS's cache at 256 MB for good).
_BOUNDED_CACHE = SharedSetting(_cache_max, _set_cache_max, GDAL_CACHE_MB * 1024 * 1024)


@contextlib.contextmanager
def gdal_env() -> Iterator[None]:
    """GDAL settings for windowed jobs (bounded block cache, shared by the jobs running at once).

    GDAL's .aux.xml sidecars stay on: they carry a file's CRS and transform
    (a PROFILE=BASELINE GeoTIFF, a PNG georeferenced by QGIS), its nodata value
    and band metadata (ENVI bbl, wavelengths) as QGIS reads them; with them off,
    such a file's scores came out without georeferencing and nodata counted as
    data. The jobs only read pixels and write GeoTIFFs, which hold their own
    metadata, so they leave no sidecar (tests/test_raster_io.py checks it).
    """
    with _BOUNDED_CACHE.held(), rasterio.Env():
        yield


@dataclass(frozen=True)
class RasterInfo:
    """What a job needs to know about a raster without reading its pixels."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    nodata: Optional[float]
    crs: Optional[Any]
    transform: Affine
    georeferenced: bool
    gcps: Tuple[Tuple[Any, ...], Optional[Any]] = ((), None)  # ground control points and their CRS, if any
    rpcs: Optional[Any] = None  # rational polynomial coefficients (satellite L1 products), if any

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.height, self.width)


# how to give a file a CRS, for messages: a CRS set on a layer in QGIS changes the layer, not its file
ASSIGN_CRS_HOW = ("Raster > Projections > Assign Projection, or gdal_edit.py -a_srs EPSG:…; RS Lab reads the file, "
                  "and a CRS set on the layer in QGIS does not reach it")


def crs_name(crs: Optional[Any]) -> str:
    """A CRS as messages name it: 'EPSG:32616', else its name ('WGS 84 / UTM zone 16N'), 'no CRS' for None (a
    CRS without an EPSG code printed as its whole WKT, some 750 characters)."""
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    try:
        from pyproj import CRS

        return CRS.from_wkt(crs.to_wkt()).name
    except Exception:  # a CRS pyproj cannot read: its WKT, however long
        return crs.to_wkt()


def _is_georeferenced(ds: Any) -> bool:
    if ds.crs is not None:
        return True
    if ds.gcps[0] or ds.rpcs:
        return True
    return ds.transform != Affine.identity()


def open_raster(path: str) -> Any:
    """Open `path` for reading, raising RSLabError with a clear reason if we cannot."""
    if not path:
        raise RSLabError("no raster path was given")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RSLabError(f"raster file not found: {path}")
    if os.path.isdir(path):
        raise RSLabError(f"{path} is a folder, not a raster file")
    try:
        ds = rasterio.open(path)
    except RasterioIOError as exc:
        if os.path.basename(path).startswith(PARTIAL_PREFIX):  # an output of this job, read back
            raise write_failed(path, exc, "could not read back an output of this job") from exc
        if path.lower().endswith(".hdr"):
            raise RSLabError(_envi_header_message(path)) from exc
        raise RSLabError(f"{os.path.basename(path)} is not a raster GDAL can read ({exc})") from exc
    if ds.width == 0 or ds.height == 0 or ds.count == 0:
        ds.close()
        raise RSLabError(f"{os.path.basename(path)} is empty ({ds.width} x {ds.height} x {ds.count})")
    return ds


def _envi_header_message(header: str) -> str:
    """What to open instead of an ENVI header: its data file, the name beside it without .hdr's suffix."""
    stem = os.path.splitext(header)[0]
    folder = os.path.dirname(header) or "."
    data = sorted(name for name in os.listdir(folder)
                  if os.path.splitext(name)[0] == os.path.basename(stem) and not name.lower().endswith((".hdr", ".xml")))
    choose = f"choose its data file ({', '.join(data)})" if data else "choose its data file (the same name without .hdr)"
    return f"{os.path.basename(header)} is an ENVI header, which describes the image; {choose}"


def describe(ds: Any) -> RasterInfo:
    """RasterInfo for an open rasterio dataset."""
    return RasterInfo(
        path=ds.name,
        width=ds.width,
        height=ds.height,
        count=band_count(ds),
        dtype=ds.dtypes[0],
        nodata=ds.nodata,
        crs=ds.crs,
        transform=ds.transform,
        georeferenced=_is_georeferenced(ds),
        gcps=(tuple(ds.gcps[0]), ds.gcps[1]),
        rpcs=ds.rpcs,
    )


def raster_info(path: str) -> RasterInfo:
    """Open, describe and close."""
    with gdal_env(), open_raster(path) as ds:
        return describe(ds)


def alpha_bands(ds: Any) -> List[int]:
    """1-based indexes of the bands tagged alpha (none when every band is: then they are data)."""
    alpha = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci == ColorInterp.alpha]
    return alpha if len(alpha) < ds.count else []


def data_bands(ds: Any) -> List[int]:
    """1-based indexes of the bands that hold data: all but an alpha band (which is the mask)."""
    alpha = alpha_bands(ds)
    return [i for i in range(1, ds.count + 1) if i not in alpha]


def band_count(ds: Any) -> int:
    return len(data_bands(ds))


def read_bands(ds: Any, bands: List[int], **where: Any) -> np.ndarray:
    """`ds.read(bands, **where)`, also for bands of different data types (a VRT stacking a uint16 and a
    float32 file), which rasterio refuses ("more than one 'dtype' found"): read one by one into their
    common type then."""
    types = {ds.dtypes[band - 1] for band in bands}
    if len(types) == 1:
        return ds.read(bands, **where)
    common = np.result_type(*types)
    out_shape = where.pop("out_shape", None)
    return np.stack([ds.read(band, out_shape=out_shape[1:] if out_shape else None, **where).astype(common, copy=False)
                     for band in bands])


def _nodata_valid(band: np.ndarray, nodata: float) -> np.ndarray:
    """Where one band is not its nodata value, compared as GDAL's nodata mask band compares."""
    if np.issubdtype(band.dtype, np.floating):
        value = band.dtype.type(nodata)
        if np.isnan(value):
            return ~np.isnan(band)
        # GDAL's ARE_REAL_EQUAL: equal, or |a - b| < 2 eps |a + b| with float32's eps for float64 data too
        # (so -9999.001 is nodata -9999 in a float64 band), computed in the band's type, overflow included
        with np.errstate(over="ignore", invalid="ignore"):
            near = np.abs(band - value) < np.finfo(np.float32).eps * np.abs(band + value) * 2
        return ~((band == value) | near)
    # integer bands: GDAL gives a nodata mask only for a value inside the type's range, and truncates it as C does
    return band != np.asarray(nodata).astype(band.dtype)


def _band_valid(ds: Any, band: int, values: np.ndarray, **where: Any) -> Optional[np.ndarray]:
    """Where one band without a mask band or alpha band is valid by its nodata value, from its pixels `values`
    (None: everywhere)."""
    if MaskFlags.nodata not in ds.mask_flag_enums[band - 1]:
        return None
    nodata = ds.nodatavals[band - 1]
    if nodata is None:
        # GDAL masks a nodata value rasterio does not report (a fractional or out-of-range value on a
        # 16-bit band, e.g. 32767.5 on Int16): GDAL's own mask of that band, read once more
        return ds.read_masks(band, **where) > 0
    return _nodata_valid(values, nodata)


def band_masks(ds: Any, bands: List[int], data: np.ndarray, **where: Any) -> np.ndarray:
    """Where each of `bands` is valid, (len(bands), h, w), as `ds.read_masks(bands)` gives it, from the pixels
    already read in `data` (read with the same `where`: a window, or an out_shape whose last two numbers are
    given here) where it can be. read_masks decodes a pixel-interleaved strip once per band: 113 s for the
    first 256 x 256 window of a striped 1200 x 1200 x 205 cube, whose pixels took 0.9 s."""
    out = np.ones(data.shape, dtype=bool)
    shared = None
    for i, band in enumerate(bands):
        if MaskFlags.per_dataset in ds.mask_flag_enums[band - 1]:  # a mask band or an alpha band: one read
            if shared is None:
                shared = ds.dataset_mask(**where) > 0
            out[i] = shared
            continue
        valid = _band_valid(ds, band, data[i], **where)
        if valid is not None:
            out[i] = valid
    return out


def _dataset_mask(ds: Any, bands: List[int], data: np.ndarray, **where: Any) -> np.ndarray:
    """The mask of rasterio's `dataset_mask`, from the pixels already read where it can be.

    A mask band or an alpha band is read (one band). A mask built from nodata
    values is derived from `data`: `dataset_mask` would read every band's mask,
    that is every band a second time, and on a pixel-interleaved, compressed
    GeoTIFF whose blocks are large beside GDAL's block cache, each of those
    reads decompresses the whole block again: RX on a 1000 x 1000 x 200
    float64 deflate cube with NaN nodata took 204 s instead of 20 s
    (bench/read_layouts.py).
    """
    flags = ds.mask_flag_enums
    if MaskFlags.per_dataset in flags[0]:  # a mask band, or an alpha band GDAL uses as the mask
        return ds.dataset_mask(**where) > 0
    # (rasterio's dataset_mask takes band 4's mask alone for any 4-band image tagged RGB; an RGB + NIR image
    # whose 4th band is not alpha keeps the per-band rule below, so NIR 0 over deep water is not nodata)
    valid = np.zeros(data.shape[1:], dtype=bool)
    for i, band in enumerate(bands):  # valid where any band is valid (rasterio ORs the band masks)
        band_valid = _band_valid(ds, band, data[i], **where)
        if band_valid is None:
            valid[:] = True
            break
        valid |= band_valid
    alpha = [band for band in alpha_bands(ds) if band not in bands]
    if alpha:
        # An alpha band GDAL does not take as the mask: GDAL does only for gray + alpha and RGB + alpha, so
        # the alpha band a warped VRT adds to a 13-band image (pixels outside the source: alpha 0) would
        # be ignored, and rasterio's dataset_mask ignores it too. Transparent pixels are nodata here.
        valid &= ds.read(alpha[0], **where) > 0
    return valid


def _valid_pixels(ds: Any, bands: List[int], data: np.ndarray, **where: Any) -> np.ndarray:
    """The dataset mask, less pixels with a NaN or infinite band."""
    valid = _dataset_mask(ds, bands, data, **where)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return valid


def read_window(ds: Any, window: Window, bands: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read `bands` (1-based; default: the data bands) of `window`: (bands, h, w) array and an (h, w) valid mask.

    A pixel is invalid when GDAL's dataset mask says so (nodata value, alpha
    band, mask band) or when any of the bands read is NaN or infinite.
    """
    bands = list(bands) if bands is not None else data_bands(ds)
    data = read_bands(ds, bands, window=window)
    return data, _valid_pixels(ds, bands, data, window=window)


def read_label_window(ds: Any, window: Window) -> Tuple[np.ndarray, np.ndarray]:
    """The first data band of a label or reference raster in `window`, and where it is valid, 0 included.

    0 is a label value (no change, background, not labelled), and GIS tools often set nodata 0 on a 0/1
    mask only to draw its background transparent: a 0 masked by that nodata value alone is valid here.
    Pixels an alpha band or a mask band hides (outside a reference resampled onto another grid, which a
    warped VRT's alpha marks) stay invalid.
    """
    data, valid = read_window(ds, window)
    band = data_bands(ds)[0]
    if ds.nodatavals[band - 1] == 0 and MaskFlags.nodata in ds.mask_flag_enums[band - 1]:
        zero = data[0] == 0
        alpha = alpha_bands(ds)
        if alpha:
            zero &= ds.read(alpha[0], window=window) > 0
        valid = valid | zero
    return data[0], valid


def decimated_shape(ds: Any, max_pixels: int) -> Tuple[Tuple[int, int], int]:
    """((rows, columns), step): the size a read of the whole raster takes to hold at most about `max_pixels`,
    every `step`-th pixel each way (1: every pixel)."""
    step = max(1, int(np.ceil(np.sqrt(ds.width * ds.height / max(1, max_pixels)))))
    return (max(1, ds.height // step), max(1, ds.width // step)), step


def read_decimated(ds: Any, max_pixels: int) -> Tuple[np.ndarray, np.ndarray]:
    """The whole raster's data bands read at a reduced size (at most about `max_pixels`), and its valid mask.

    For statistics over a whole raster (per-band mean and std, Otsu
    thresholds) in bounded memory: GDAL decimates while reading.
    """
    shape, _ = decimated_shape(ds, max_pixels)
    bands = data_bands(ds)
    data = read_bands(ds, bands, out_shape=(len(bands),) + shape)
    return data, _valid_pixels(ds, bands, data, out_shape=shape)


# GDAL's band metadata for the centre wavelength, as its ENVI driver sets it from a header's
# `wavelength` / `wavelength units` and as `import_cube` writes it into GeoTIFFs.
WAVELENGTH_KEY, WAVELENGTH_UNITS_KEY = "wavelength", "wavelength_units"
WAVELENGTH_UNIT_KEYS = (WAVELENGTH_UNITS_KEY, "wavelength_unit")  # the second: GDAL's Sentinel-2 driver
UNIT_SYMBOLS = {"nanometers": "nm", "nanometer": "nm", "nm": "nm", "micrometers": "µm", "micrometer": "µm",
                 "microns": "µm", "micron": "µm", "um": "µm", "µm": "µm"}


def wavelength_unit_of(values: np.ndarray) -> str:
    """The unit wavelengths given without one are read in ("Nanometers" or "Micrometers", GDAL's words):
    values of 100 or more are nanometres, smaller ones micrometres (visible to SWIR spans 0.4-2.5 µm, 400-2500
    nm). For .mat files, which never say, and ENVI headers without `wavelength units`."""
    return "Nanometers" if float(np.max(values)) >= 100 else "Micrometers"


def band_wavelengths(ds: Any) -> Optional[Tuple[np.ndarray, str]]:
    """The data bands' centre wavelengths and their unit symbol ("nm", "µm", or the file's own word).

    None unless every data band has a numeric `wavelength` item: a plot against
    band numbers is better than one against a partly invented axis.
    """
    values, units = [], set()
    for band in data_bands(ds):
        tags = {key.lower(): value for key, value in ds.tags(band).items()}
        try:
            values.append(float(tags[WAVELENGTH_KEY]))
        except (KeyError, ValueError):
            return None
        units.add(next((tags[key] for key in WAVELENGTH_UNIT_KEYS if key in tags), "").strip())
    if not values or not np.all(np.isfinite(values)):
        return None
    unit = units.pop() if len(units) == 1 else ""
    return np.asarray(values), UNIT_SYMBOLS.get(unit.lower(), unit)


def output_profile(
    info: RasterInfo,
    count: int,
    dtype: str,
    nodata: Optional[float],
    compress: str = "deflate",
    strip_rows: Optional[int] = None,
) -> Dict[str, Any]:
    """A tiled GeoTIFF profile on the grid of `info` (CRS, transform, size kept); stored in strips of
    `strip_rows` rows instead when given (an output written by full-width windows, core/tiling.strip_rows)."""
    profile: Dict[str, Any] = {
        "driver": "GTiff",
        "width": info.width,
        "height": info.height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": compress,
        "BIGTIFF": "IF_SAFER",
    }
    if count > 1:
        # One block per band: a pixel-interleaved 256 x 256 block holds every band (105 MB for 200 float64
        # bands) and is decompressed whole for a read of any one band; any per-band access to it (as
        # rasterio's dataset mask made, see _dataset_mask) costs a whole block. Also faster to write.
        profile["interleave"] = "band"
    if compress == "deflate":
        # Level 1 writes about 6x faster than the default 6 for ~13 % more disk
        # (measured on float32 output); compression was the engine's bottleneck.
        profile["zlevel"] = 1
    if compress and compress.lower() != "none":
        # GDAL compresses the blocks in this many threads (bench/tiling.py: the blocks flushed when the file
        # closes were most of a cheap job's time, compressed one at a time), as many as torch may use
        profile["num_threads"] = str(cpu_threads())
    if info.width < 256 or info.height < 256 or strip_rows:
        # GeoTIFF tiles must be multiples of 16; small rasters use strips.
        profile.update(tiled=False)
        profile.pop("blockxsize")
        profile.pop("blockysize")
        if strip_rows:
            profile["blockysize"] = strip_rows  # rasterio's name for ROWSPERSTRIP
    if info.crs is None and info.gcps[0]:
        # placed by ground control points only (no geotransform): the outputs carry the same points
        profile["gcps"] = list(info.gcps[0])
        profile["crs"] = info.gcps[1]
    elif info.crs is None and info.rpcs is not None and info.transform.is_identity:
        # placed by RPCs only: the outputs carry them (and no geotransform), so QGIS places both alike
        profile["rpcs"] = info.rpcs
    elif info.georeferenced:
        profile["crs"] = info.crs
        profile["transform"] = info.transform
    return profile


def open_output(path: str, profile: Dict[str, Any]) -> Any:
    """Open a GeoTIFF for writing, with an RSLabError if GDAL refuses."""
    try:
        return rasterio.open(path, "w", **profile)
    except RasterioIOError as exc:
        raise RSLabError(f"cannot write {os.path.basename(path)}: {exc}") from exc


def pixel_of(path: str, x: float, y: float) -> Optional[Tuple[int, int]]:
    """(row, col) of the pixel of the georeferenced raster at `path` that holds the point (x, y) of its own
    CRS, placed as GDAL places it (geotransform, rotated or south-up ones included, ground control points,
    RPCs); None outside the raster."""
    from .gdal_exceptions import gdal_exceptions

    with gdal_exceptions() as gdal:
        ds = gdal.Open(os.fspath(path))
        try:
            placed, (col, row, _) = gdal.Transformer(ds, None, []).TransformPoint(1, x, y, 0)
        except RuntimeError as exc:
            raise RSLabError(f"cannot place that point on {os.path.basename(path)}: {exc}") from exc
        width, height = ds.RasterXSize, ds.RasterYSize
        ds = None
    if not placed or not (0 <= col < width and 0 <= row < height):
        return None
    return int(row), int(col)


def centres_of(path: str, cells: Sequence[Tuple[int, int]]) -> Optional[List[Tuple[float, float]]]:
    """The (x, y) of the centres of `cells` ((row, col) pixels) of the raster at `path`, in its own CRS, placed
    as GDAL places them (as pixel_of, the other way); None for a raster without georeferencing."""
    from .gdal_exceptions import gdal_exceptions

    if not raster_info(path).georeferenced:
        return None
    if not cells:
        return []
    with gdal_exceptions() as gdal:
        ds = gdal.Open(os.fspath(path))
        try:
            transformer = gdal.Transformer(ds, None, [])
            placed = [transformer.TransformPoint(0, col + 0.5, row + 0.5, 0) for row, col in cells]
        except RuntimeError as exc:
            raise RSLabError(f"cannot place pixels of {os.path.basename(path)} on its CRS: {exc}") from exc
        ds = None
    if not all(ok for ok, _ in placed):
        return None
    return [(x, y) for _, (x, y, _) in placed]


def same_grid(a: RasterInfo, b: RasterInfo, tolerance: float = 1e-6) -> bool:
    """True when a and b have the same size, CRS and transform (pixel-aligned)."""
    if a.shape != b.shape:
        return False
    if (a.crs is None) != (b.crs is None):
        return False
    if a.crs is not None and a.crs != b.crs:
        return False
    pixel = max(abs(a.transform.a), abs(a.transform.e), 1e-12)
    return a.transform.almost_equals(b.transform, precision=tolerance * pixel)
