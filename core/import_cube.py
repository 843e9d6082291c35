"""Convert a MATLAB .mat hyperspectral cube (and its ground truth) into GeoTIFFs.

The hyperspectral benchmark scenes (ABU, HYDICE, ...) ship as .mat files
holding an H x W x B array and often an H x W ground-truth map. This job
writes them as a B-band GeoTIFF and a one-band GeoTIFF that QGIS and every
other RS Lab job can open. Band count and dtype are kept (int8 and 64-bit
integers, which GDAL 3.6 cannot store, are widened or narrowed only where no
value changes); NaN pixels of float cubes become the nodata value. MATLAB
v7.3 files are HDF5 and need h5py. A vector of band centre wavelengths
beside the cube (`wavelengths`, `wavelength`, or MUUFL's `wavlength`) is
written as each band's GDAL `wavelength` / `wavelength_units` metadata, as
GDAL's ENVI driver reports a header's wavelengths, so spectra plot against
wavelength. A file without the default cube variable `data` is read from its
only 3-D numeric array when it has exactly one (MUUFL's `hsi_img`,
`hsi_sub`, ...); the ground truth is never guessed (a mask of valid pixels
looks like one), the error names the H x W candidates instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .errors import RSLabError
from .job import CancelledFn, JobMonitor, JobResult, ProgressFn
from .outputs import PendingOutputs, check_output_paths
from .raster_io import WAVELENGTH_KEY, WAVELENGTH_UNITS_KEY, gdal_env, open_output, wavelength_unit_of

WAVELENGTH_VARIABLES = ("wavelengths", "wavelength", "wavlength")  # the last: MUUFL Gulfport's spelling
# numpy dtypes GDAL 3.6 GeoTIFF stores as they are.
_NATIVE = {"uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"}


DEFAULT_CUBE_KEY = "data"
DEFAULT_GT_KEY = "map"


@dataclass(frozen=True)
class ImportCubeParams:
    cube_key: str = DEFAULT_CUBE_KEY
    gt_key: str = DEFAULT_GT_KEY

    def __post_init__(self) -> None:
        if not self.cube_key or not self.cube_key.strip():
            raise RSLabError("the cube variable name (CUBE_KEY) cannot be empty")


@dataclass
class ImportCubeResult(JobResult):
    cube_path: str = ""
    gt_path: Optional[str] = None
    width: int = 0
    height: int = 0
    bands: int = 0
    dtype: str = ""
    nodata: Optional[float] = None
    wavelength_unit: Optional[str] = None  # set when band wavelengths were written
    note: str = ""


def read_mat_variables(path: str) -> Dict[str, Any]:
    """All array variables of a .mat file (v5 via scipy, v7.3 via h5py), H x W x B as MATLAB shows them."""
    if not os.path.isfile(path):
        raise RSLabError(f"MATLAB file not found: {path}")
    name = os.path.basename(path)
    with open(path, "rb") as handle:
        head = handle.read(520)  # MATLAB v7.3 puts its HDF5 signature after a 512-byte user block
    if head[:8] == b"\x89HDF\r\n\x1a\n" or head[512:520] == b"\x89HDF\r\n\x1a\n" or b"MATLAB 7.3" in head[:128]:
        return _read_hdf5_mat(path)
    if not head.startswith(b"MATLAB"):
        raise RSLabError(f"{name} is not a MATLAB .mat file")
    import scipy.io

    try:
        content = scipy.io.loadmat(path)
    except (ValueError, NotImplementedError, OSError) as exc:
        raise RSLabError(f"{name} could not be read as a MATLAB file: {exc}") from exc
    return {k: v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


def _read_hdf5_mat(path: str) -> Dict[str, Any]:
    try:
        import h5py
    except ImportError as exc:
        raise RSLabError(
            f"{os.path.basename(path)} is a MATLAB v7.3 (HDF5) file; reading it needs h5py "
            "(Debian: apt install python3-h5py), or save it in MATLAB with -v7"
        ) from exc
    out = {}
    with h5py.File(path, "r") as handle:
        for key, item in handle.items():
            if isinstance(item, h5py.Dataset) and item.ndim >= 2:
                # MATLAB stores column-major: HDF5 sees the axes reversed.
                out[key] = np.asarray(item).transpose(tuple(range(item.ndim - 1, -1, -1)))
    return out


def _storable(array: np.ndarray, what: str) -> tuple:
    """(array, note): array in a dtype GDAL stores, converted only where no value changes."""
    dtype = array.dtype
    if dtype.name in _NATIVE:
        return array, ""
    if dtype == np.bool_:
        return array.astype(np.uint8), f"{what}: bool stored as uint8"
    if dtype == np.int8:
        return array.astype(np.int16), f"{what}: int8 stored as int16 (GDAL 3.6 has no int8)"
    if dtype == np.float16:
        return array.astype(np.float32), f"{what}: float16 stored as float32"
    if dtype.kind in "iu":
        for target in (np.uint8, np.uint16, np.int16, np.uint32, np.int32):
            info = np.iinfo(target)
            if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
                return array.astype(target), f"{what}: {dtype.name} stored as {np.dtype(target).name} (values fit)"
        raise RSLabError(f"{what} holds {dtype.name} values beyond the 32-bit range GeoTIFF can store")
    raise RSLabError(f"{what} has dtype {dtype.name}, which is not a numeric raster type")


def _listing(variables: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in variables.items()) or "no arrays"


def _variable(variables: Dict[str, Any], key: str, name: str, role: str, hint: str = "") -> np.ndarray:
    if key not in variables:
        raise RSLabError(f"{name} has no variable {key!r} for the {role}; it holds: {_listing(variables)}{hint}")
    return variables[key]


def _numeric(value: np.ndarray) -> bool:
    return value.dtype.kind in "biuf"


def _cube_variable(variables: Dict[str, Any], key: str, name: str) -> Tuple[str, np.ndarray, str]:
    """(variable name, array, note): `key`, or for the default key absent, the file's only 3-D numeric array."""
    hint = "; name the cube with CUBE_KEY"
    if key not in variables and key == DEFAULT_CUBE_KEY:
        cubes = [k for k, v in variables.items() if v.ndim == 3 and _numeric(v) and min(v.shape) > 1]
        if len(cubes) == 1:
            return cubes[0], variables[cubes[0]], f"cube read from {cubes[0]!r}, the file's only 3-D array (it has no {key!r})"
        if cubes:
            hint = f"; it has {len(cubes)} 3-D arrays{hint}"
    return key, _variable(variables, key, name, "cube", hint), ""


def _gt_candidates(variables: Dict[str, Any], cube_key: str, shape: Tuple[int, int]) -> str:
    """A hint naming the 2-D numeric variables (other than the cube) of the cube's height and width."""
    names = [k for k, v in variables.items() if k != cube_key and _numeric(v) and np.squeeze(v).shape == shape]
    if not names:
        return f"; none is {shape[0]} x {shape[1]} like the cube"
    return f"; name the ground truth with GT_KEY ({shape[0]} x {shape[1]}: {', '.join(names)})"


def _wavelengths(variables: Dict[str, Any], bands: int) -> Tuple[Optional[np.ndarray], Optional[str], str]:
    """(values, GDAL unit word, note) from a wavelength vector of one value per band; (None, None, note) if none.

    .mat files do not say the unit: values of 100 or more are taken as
    nanometres, smaller ones as micrometres (visible to SWIR spans 0.4-2.5 um,
    400-2500 nm).
    """
    for key, value in variables.items():
        if key.lower() not in WAVELENGTH_VARIABLES:
            continue
        values = np.asarray(value)
        values = values.astype(np.float64).ravel() if values.dtype.kind in "iuf" else np.empty(0)
        if len(values) != bands or not np.all(np.isfinite(values)):
            return None, None, f"{key!r} is not one finite wavelength per band; bands are numbered instead"
        unit = wavelength_unit_of(values)
        span = f"{values.min():.4g}-{values.max():.4g}"
        return values, unit, f"band wavelengths from {key!r} ({span}, read as {unit.lower()})"
    return None, None, ""


def import_cube(
    input_path: str,
    output_cube: str,
    output_gt: Optional[str] = None,
    params: ImportCubeParams = ImportCubeParams(),
    progress: Optional[ProgressFn] = None,
    cancelled: Optional[CancelledFn] = None,
) -> ImportCubeResult:
    """Write the cube (and, when `output_gt` is given, the ground truth) as GeoTIFFs."""
    monitor = JobMonitor(progress, cancelled)
    check_output_paths({"cube": output_cube, "ground truth": output_gt}, {"input file": input_path},
                       rasters=("cube", "ground truth"))
    name = os.path.basename(input_path)
    monitor.step(0.0, f"reading {name}")
    with monitor.timed("read"):
        variables = read_mat_variables(input_path)
    cube_key, cube, found_note = _cube_variable(variables, params.cube_key, name)
    if cube.ndim == 2:  # Houston 2013's HSI_TrSet (2832 pixels x 144 bands) came out as a one-band image
        raise RSLabError(f"{cube_key!r} in {name} is 2-D ({cube.shape[0]} x {cube.shape[1]}): a table of pixels "
                         "by bands or a single-band image, not an H x W x B cube; name a 3-D variable with CUBE_KEY")
    if cube.ndim != 3:
        raise RSLabError(f"{cube_key!r} in {name} has shape {cube.shape}; a cube must be H x W x B")
    height, width, bands = cube.shape
    if height == 0 or width == 0 or bands == 0:
        raise RSLabError(f"{cube_key!r} in {name} is empty ({height} x {width} x {bands})")
    cube, cube_note = _storable(cube, "cube")
    notes = [found_note, cube_note]
    nodata = None
    if cube.dtype.kind == "f" and np.isnan(cube).any():
        nodata = float("nan")

    gt = None
    if output_gt:
        if not params.gt_key:
            raise RSLabError("a ground-truth output was asked for but no ground-truth variable (GT_KEY) was named")
        hint = _gt_candidates(variables, cube_key, (height, width)) if params.gt_key not in variables else ""
        gt = np.squeeze(_variable(variables, params.gt_key, name, "ground truth", hint))
        if gt.shape != (height, width):
            # a cube saved bands first (numpy's and PyTorch's habit) shows here: its last two axes match
            order = (f"; {cube_key!r} ({height} x {width} x {bands}) looks stored bands first, {height} bands of "
                     f"{width} x {bands} pixels: save it as rows x columns x bands, e.g. numpy.moveaxis(cube, 0, -1)"
                     if gt.shape == (width, bands) else "")
            raise RSLabError(
                f"ground truth {params.gt_key!r} is {gt.shape} but the cube is {height} x {width}; they must match"
                + order
            )
        gt, gt_note = _storable(gt, "ground truth")
        notes.append(gt_note)

    wavelengths, unit, wavelength_note = _wavelengths(variables, bands)
    notes.append(wavelength_note)

    result = ImportCubeResult(
        timings=monitor.timings, cube_path=output_cube, gt_path=output_gt if gt is not None else None,
        width=width, height=height, bands=bands, dtype=cube.dtype.name, nodata=nodata,
        wavelength_unit=unit, note="; ".join(n for n in notes if n),
    )
    profile = {"driver": "GTiff", "width": width, "height": height, "interleave": "band",
               "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    with gdal_env(), PendingOutputs() as pending, monitor.timed("write"):
        with open_output(pending.temp(output_cube), dict(profile, count=bands, dtype=cube.dtype.name, nodata=nodata)) as dst:
            chunk = 16
            for start in range(0, bands, chunk):
                monitor.step(0.05 + 0.9 * start / bands, f"writing bands {start + 1}-{min(start + chunk, bands)}")
                stop = min(start + chunk, bands)
                dst.write(np.moveaxis(cube[:, :, start:stop], 2, 0), indexes=list(range(start + 1, stop + 1)))
            if wavelengths is not None:
                for band, value in enumerate(wavelengths, start=1):
                    dst.update_tags(band, **{WAVELENGTH_KEY: f"{value:g}", WAVELENGTH_UNITS_KEY: unit})
                    dst.set_band_description(band, f"{value:g} {unit.lower()}")
        if gt is not None:
            with open_output(pending.temp(output_gt), dict(profile, count=1, dtype=gt.dtype.name, nodata=None)) as dst:
                dst.write(gt[None])
        monitor.check()
    monitor.done(f"wrote {bands} bands")
    return result
