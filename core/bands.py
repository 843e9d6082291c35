"""Choosing the bands a job reads: a band subset of a raster, and the bands a file flags as bad.

Change detection reads the bands a user picks (Sentinel-2's 10 m bands, say)
through a GDAL VRT of them (nodata kept) in the job's work folder: nothing is
copied, and the VRT can then be warped onto the other image's grid. Anomaly
detection reads its good bands (below) from the file itself with a band list
(raster_io.read_window): a VRT reads band by band through 128-row blocks of
its own, and on a many-band file stored in strips that decoded every strip
once per band (a 256 x 256 window of a striped 4000 x 1000 x 200 cube less
10 bands took 83 s; by band list 0.07 s).

ENVI headers carry a bad band list, `bbl = {1, 1, 0, ...}` (0 = bad): the
water-absorption and detector-edge bands of an airborne scene, which hold
little but noise. ENVI's own tools leave them out of analyses, and so does
anomaly detection here: a noisy band inflates the covariance RX inverts and
gives BSDM noise to learn. GDAL exposes the list in the file's ENVI metadata
domain; other formats have no such list, and all their bands are used.
"""
from __future__ import annotations

import os
import re
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import RSLabError
from .gdal_exceptions import gdal_exceptions
from .raster_io import (UNIT_SYMBOLS, alpha_bands, band_masks, band_wavelengths, data_bands, decimated_shape, gdal_env,
                        open_raster, read_bands, wavelength_unit_of)

# Red, green and blue light: the centres a true-colour view takes its bands nearest to, and how far
# off a band may lie (Sentinel-2's B4, B3, B2 at 665, 560, 490 nm qualify; a SWIR-only cube does not).
TRUE_COLOUR_NM = (640.0, 550.0, 470.0)
TRUE_COLOUR_TOLERANCE_NM = 30.0
_NANOMETRES_PER = {"nm": 1.0, "µm": 1000.0}


def _good_flags(path: str) -> List[bool]:
    """One flag per data band from the file's ENVI bad band list (True = good); [] without a usable list."""
    with gdal_env(), open_raster(path) as ds:
        text = ds.tags(ns="ENVI").get("bbl", "")
        count = len(data_bands(ds))
    flags = re.findall(r"[-+0-9.eE]+", text)
    if len(flags) != count:
        return []  # no list, or one that does not match the bands: use them all
    return [float(flag) != 0 for flag in flags]


def bad_bands(path: str) -> List[int]:
    """The 1-based bands that the file's ENVI bad band list flags (0 = bad); [] without a usable list."""
    return [band for band, good in enumerate(_good_flags(path), start=1) if not good]


def band_subset(path: str, bands: Sequence[int], workdir: str, tag: str = "bands") -> str:
    """A VRT in `workdir` that reads only `bands` (1-based, in this order) of `path`.

    An alpha band of `path` comes along as the VRT's last band, so its transparent pixels stay nodata.
    """
    with gdal_env(), open_raster(path) as ds:
        alpha = alpha_bands(ds)
    view = os.path.join(workdir, f"{tag}_{os.path.basename(path)}.vrt")
    with gdal_exceptions() as gdal:
        options = gdal.TranslateOptions(format="VRT", bandList=list(bands) + alpha[:1])
        try:
            gdal.Translate(view, path, options=options)
        except RuntimeError as exc:
            raise RSLabError(f"could not read bands {band_ranges(sorted(bands))} of {os.path.basename(path)}: "
                             f"{exc}") from exc
    return view


def true_colour_bands(path: str) -> Optional[Tuple[int, int, int]]:
    """The file's (red, green, blue) bands, 1-based: those nearest 640, 550 and 470 nm by its band wavelengths.

    None when the file has no wavelengths in nm or µm (given without a unit, values of 100 or more are nm, smaller
    ones µm, as raster_io.wavelength_unit_of reads them), or no good band lies within
    TRUE_COLOUR_TOLERANCE_NM of one of the three. Bands its ENVI header flags bad are passed over.
    """
    with gdal_env(), open_raster(path) as ds:
        wavelengths = band_wavelengths(ds)
        bands = data_bands(ds)
    if wavelengths is None:
        return None
    values, unit = wavelengths
    if not unit:  # an ENVI header without `wavelength units`: read as import_cube reads a .mat's
        unit = UNIT_SYMBOLS[wavelength_unit_of(values).lower()]
    if unit not in _NANOMETRES_PER:
        return None
    nanometres = values * _NANOMETRES_PER[unit]
    good = _good_flags(path) or [True] * len(bands)
    candidates = [i for i, ok in enumerate(good) if ok]
    chosen = []
    for centre in TRUE_COLOUR_NM:
        nearest = min(candidates, key=lambda i: abs(nanometres[i] - centre))
        if abs(nanometres[nearest] - centre) > TRUE_COLOUR_TOLERANCE_NM:
            return None
        chosen.append(bands[nearest])
    return chosen[0], chosen[1], chosen[2]


COLOURS = ("red", "green", "blue")
# a colour word not inside another word ("band_red" counts, "redness" not), and not Sentinel-2's "red edge"
_COLOUR_WORD = re.compile(r"(?<![a-z])(red|green|blue)(?![a-z])(?![\s_-]*edge)", re.IGNORECASE)
# Sentinel-2's names for its visible bands, as its products and the OSCD files name them: only the
# zero-padded form ("B2" is green in Landsat TM's numbering, blue in Landsat 8's)
_SENTINEL2_COLOUR = re.compile(r"^\s*B0([234])(?![0-9a-z])", re.IGNORECASE)
_SENTINEL2_COLOURS = {"2": "blue", "3": "green", "4": "red"}


def colour_bands(path: str) -> Optional[Tuple[int, int, int]]:
    """The file's (red, green, blue) bands, 1-based: the bands whose descriptions name one colour each
    ("Red", "B4 red", Sentinel-2's "B04"), else by wavelength (`true_colour_bands`); None when neither says.

    An RGB model's card names its bands "red", "green", "blue" (by convention, in that order); images
    stored blue-green-red (Sentinel-2's B02, B03, B04; Landsat TM 1-3) must be read in the model's order.
    """
    with gdal_env(), open_raster(path) as ds:
        bands = data_bands(ds)
        descriptions = [(ds.descriptions[band - 1] or "") for band in bands]
    found = {}
    for band, text in zip(bands, descriptions):
        words = {word.lower() for word in _COLOUR_WORD.findall(text)}
        sentinel2 = _SENTINEL2_COLOUR.match(text)
        if not words and sentinel2:
            words = {_SENTINEL2_COLOURS[sentinel2.group(1)]}
        if len(words) == 1:
            found.setdefault(words.pop(), []).append(band)
    if all(len(found.get(colour, [])) == 1 for colour in COLOURS):
        return found["red"][0], found["green"][0], found["blue"][0]
    return true_colour_bands(path)


def model_colour_bands(model_bands: Sequence[str], path: str) -> Optional[List[int]]:
    """The image's bands (1-based) for a model of red, green and blue, in the order its card names them;
    None when the model's bands are not those three or the image does not say where they are (colour_bands)."""
    names = [name.lower() for name in model_bands]
    if sorted(names) != sorted(COLOURS):
        return None
    colours = colour_bands(path)
    if colours is None:
        return None
    return [dict(zip(COLOURS, colours))[name] for name in names]


def colour_order_note(model_bands: Sequence[str], path: str, bands: Optional[Sequence[int]]) -> Optional[str]:
    """A note when a model trained on red, green, blue (its card's band names, in some order) reads the
    image's `bands` (None: all, in file order) and the image says its colours lie in other bands."""
    wanted = model_colour_bands(model_bands, path)
    if wanted is None:
        return None
    names = [name.lower() for name in model_bands]
    read = list(bands) if bands else list(range(1, len(wanted) + 1))
    if read == wanted:
        return None
    return (f"the model takes {', '.join(names)}, and in these images those are bands "
            f"{', '.join(map(str, wanted))} (their band descriptions or wavelengths say so), but bands "
            f"{', '.join(map(str, read))} were read: the change map is meaningless; choose bands "
            f"{', '.join(map(str, wanted))}, in that order (BANDS)")


def band_descriptions(path: str) -> Optional[List[str]]:
    """The data bands' descriptions (e.g. Sentinel-2's "B02"), or None unless every band has its own."""
    with gdal_env(), open_raster(path) as ds:
        names = [(ds.descriptions[band - 1] or "").strip() for band in data_bands(ds)]
    return names if all(names) and len(set(names)) == len(names) else None


GENERIC_NAMES = re.compile(r"^(band \d+|red|green|blue)$", re.IGNORECASE)  # names a model card gives by default


def band_order_note(model_bands: Sequence[str], image_bands: Optional[Sequence[str]]) -> Optional[str]:
    """A note when a model's named bands differ from the images' band descriptions, else None.

    Only compared when both sides carry real names: a card's default names ("band 1", "red") and
    images without descriptions say nothing about which bands they are.
    """
    if not image_bands or not model_bands or any(GENERIC_NAMES.match(name) for name in model_bands):
        return None
    if [n.lower() for n in model_bands] == [n.lower() for n in image_bands]:
        return None
    return (f"the model was trained on bands {', '.join(model_bands)}, but these images' bands are "
            f"{', '.join(image_bands)}: unless they are the same bands in the same order, the change map is "
            "meaningless; choose the model's bands, in its order (BANDS)")


def check_bands(bands: Sequence[int], count: int, name: str) -> None:
    """RSLabError unless `bands` are distinct band numbers of a `count`-band raster."""
    if len(set(bands)) != len(bands):
        raise RSLabError(f"the band list {', '.join(map(str, bands))} names a band twice")
    outside = [b for b in bands if not 1 <= b <= count]
    if outside:
        raise RSLabError(f"{name} has {count} bands; there is no band {', '.join(map(str, outside))}")


EMPTY_BAND_TILE = 256  # pixels a side of the first window empty_bands reads (400 float32 bands: 100 MB)
EMPTY_BAND_SAMPLE = 1_000_000  # pixels of the decimated read that decides which bands are empty


def empty_bands(path: str, bands: Sequence[int], check: Callable[[], None] = lambda: None
                ) -> Tuple[List[int], Optional[int]]:
    """(those of `bands` that hold no valid value: NaN, or the band's nodata value; the pixels sampled to
    decide it, None when every pixel was read).

    The first window normally shows a valid value in every band, and nothing
    more is read. Bands still without one are then read decimated to about
    EMPTY_BAND_SAMPLE pixels across the image (every pixel of a smaller one):
    reading an empty band to the end took 34 s on a 10000 x 512 x 200 cube, and
    a band valid nowhere in a million pixels spread over the image would leave
    almost no pixel valid in every band anyway. `check` is a job's cancel check.
    """
    import numpy as np
    from rasterio.windows import Window

    pending = sorted(bands)
    with gdal_env(), open_raster(path) as ds:
        floating = any(np.issubdtype(np.dtype(ds.dtypes[band - 1]), np.floating) for band in pending)

        def shown(window: Optional[Window] = None, shape: Optional[Tuple[int, int]] = None) -> List[bool]:
            if window is not None:
                data = read_bands(ds, pending, window=window)
                valid = band_masks(ds, pending, data, window=window)
            else:
                data = read_bands(ds, pending, out_shape=(len(pending),) + shape)
                valid = band_masks(ds, pending, data, out_shape=shape)
            if floating:
                valid &= np.isfinite(data)
            return list(valid.reshape(len(pending), -1).any(axis=1))

        check()
        first = Window(0, 0, min(EMPTY_BAND_TILE, ds.width), min(EMPTY_BAND_TILE, ds.height))
        pending = [band for band, seen in zip(pending, shown(window=first)) if not seen]
        if not pending:
            return [], None
        check()
        shape, step = decimated_shape(ds, EMPTY_BAND_SAMPLE)
        pending = [band for band, seen in zip(pending, shown(shape=shape)) if not seen]
    return pending, (shape[0] * shape[1] if step > 1 else None)


def good_bands(path: str, check: Callable[[], None] = lambda: None) -> Tuple[List[int], int, Optional[str]]:
    """(good bands, 1-based; the data band count; a note naming the others, None when all are good).

    Good: the ENVI header's bad band list (bbl) does not flag it, and it holds a valid value somewhere (an
    all-NaN band, a masked water-vapour band, made every pixel invalid: 'the image has 0 valid pixels').
    RSLabError when fewer than two good bands remain.
    """
    with gdal_env(), open_raster(path) as ds:
        data = data_bands(ds)  # file band numbers: an alpha band may come first
    count = len(data)
    flags = _good_flags(path) or [True] * count
    name = os.path.basename(path)
    good = [band for band, ok in zip(data, flags) if ok]
    bad = [band for band, ok in zip(data, flags) if not ok]
    empty, sampled = empty_bands(path, good, check)
    good = [band for band in good if band not in empty]
    notes = []
    if bad:
        notes.append(f"{len(bad)} of {name}'s {count} bands are flagged bad in its ENVI header (bbl) and were left "
                     f"out: bands {band_ranges(bad)}")
    if empty:
        where = "in every pixel" if sampled is None else f"at every one of {sampled:,} pixels sampled across it"
        notes.append(f"{len(empty)} of {name}'s {count} bands hold no valid value (NaN or nodata {where}) "
                     f"and were left out: band{'s' if len(empty) > 1 else ''} {band_ranges(empty)}")
    if not notes:
        return good, count, None
    if len(good) < 2:
        raise RSLabError(f"{'; '.join(notes).replace(' and were left out', '')}; {len(good)} good band is too few "
                         "for anomaly detection")
    return good, count, "; ".join(notes)


def band_ranges(bands: List[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10'."""
    parts = []
    start = previous = bands[0]
    for band in bands[1:] + [None]:
        if band is not None and band == previous + 1:
            previous = band
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if band is not None:
            start = previous = band
    return ", ".join(parts)
