"""Change-detection training data: pairs of co-registered images with change labels.

Pairs come from a folder laid out as `A/` (before), `B/` (after), `label/`
(same file names; 0 = no change, non-zero = change), the layout of the
LEVIR-CD and DSIFN-CD samples, or from explicit raster triples. Small
images are held in memory; large rasters are sampled by windows, so a
training set of big GeoTIFFs never has to fit in memory.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from rasterio.windows import Window

from .bands import band_subset, check_bands
from .change_reference import read_reference
from .errors import RSLabError
from .raster_io import ASSIGN_CRS_HOW, crs_name, describe, gdal_env, open_raster, read_decimated, read_window, same_grid
from .tiling import partition

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
IN_MEMORY_PIXELS = 4_000_000  # a pair up to this size is read whole once and cropped in memory ...
IN_MEMORY_BYTES = 1 << 30  # ... while all such pairs together fit in this much memory; the rest by windows
# ImageNet statistics in 0..255 units, for 8-bit RGB (METHODS.md section 1).
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


@dataclass(frozen=True)
class ChangePair:
    before: str
    after: str
    label: str
    title: str = ""  # the pair's name when `before` is a stand-in (a band subset VRT), else its file stem

    @property
    def name(self) -> str:
        return self.title or Path(self.before).stem


def pairs_from_folder(root: str, names: Optional[Sequence[str]] = None) -> List[ChangePair]:
    """Pairs from `root/A`, `root/B`, `root/label` (optionally only the given file stems)."""
    base = Path(root)
    folders = [base / "A", base / "B", base / "label"]
    missing = [f.name for f in folders if not f.is_dir()]
    if missing:
        raise RSLabError(f"{root} needs sub-folders A/, B/ and label/; missing: {', '.join(missing)}")
    pairs = []
    for path in sorted(folders[0].iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or (names is not None and path.stem not in names):
            continue
        after, label = folders[1] / path.name, folders[2] / path.name
        if not after.exists() or not label.exists():
            raise RSLabError(f"{path.name} is in A/ but not in both B/ and label/")
        pairs.append(ChangePair(str(path), str(after), str(label)))
    if not pairs:
        raise RSLabError(f"no image pairs found in {root}/A")
    return pairs


def band_views(pairs: Sequence[ChangePair], bands: Sequence[int], workdir: str) -> List[ChangePair]:
    """The pairs with both dates read through VRTs of `bands` (1-based, in this order) in `workdir`.

    RSLabError, before any VRT is written, when a pair lacks one of the bands or names one twice.
    """
    for pair in pairs:
        check_bands(bands, check_pair(pair)[0], f"{pair.name}'s before image")
    views = []
    for i, pair in enumerate(pairs):
        views.append(ChangePair(band_subset(pair.before, bands, workdir, f"before{i}"),
                                band_subset(pair.after, bands, workdir, f"after{i}"), pair.label, pair.name))
    return views


def check_pair(pair: ChangePair) -> Tuple[int, int, int]:
    """(bands, height, width) of a pair, or RSLabError if its three rasters do not line up."""
    with gdal_env(), open_raster(pair.before) as a, open_raster(pair.after) as b, open_raster(pair.label) as lab:
        ia, ib, il = describe(a), describe(b), describe(lab)
    if ia.count != ib.count:
        raise RSLabError(f"{pair.name}: the before image has {ia.count} bands, the after image {ib.count}")
    if not same_grid(ia, ib):  # detection resamples the after image; training reads the three pixel for pixel
        raise RSLabError(
            f"{pair.name}: the after image ({ib.width} x {ib.height}, {crs_name(ib.crs)}) is not on the before "
            f"image's grid ({ia.width} x {ia.height}, {crs_name(ia.crs)}); training reads the two pixel for pixel: "
            "warp the after image onto the before image's grid first (Raster > Projections > Warp, with the before "
            "image's CRS, extent and resolution)")
    if ia.shape != il.shape:
        raise RSLabError(f"{pair.name}: the label raster is {il.width} x {il.height} pixels, the images "
                         f"{ia.width} x {ia.height}; training reads labels pixel for pixel: give a label on the "
                         "images' grid")
    if ia.georeferenced and il.georeferenced and not same_grid(ia, il):
        if ia.crs is not None and il.crs is None and ia.transform.almost_equals(il.transform):
            raise RSLabError(f"{pair.name}: the label raster's file has no CRS (its pixels lie where the images' "
                             f"do, in {crs_name(ia.crs)}); write the images' CRS into it ({ASSIGN_CRS_HOW})")
        # read pixel for pixel, it trained on labels off their pixels (detection resamples such a reference)
        raise RSLabError(f"{pair.name}: the label raster has the images' size but lies elsewhere on the map "
                         f"({crs_name(il.crs)}, origin {il.transform.c:g}, {il.transform.f:g}; the before image: "
                         f"{crs_name(ia.crs)}, {ia.transform.c:g}, {ia.transform.f:g}); training reads labels "
                         "pixel for pixel: resample it onto the before image's grid first (Raster > Projections > "
                         "Warp, nearest neighbour)")
    return ia.count, ia.height, ia.width


def pair_shapes(pairs: Sequence[ChangePair]) -> Tuple[int, List[Tuple[int, int]]]:
    """The band count all `pairs` share and each pair's (height, width), each checked with check_pair once;
    RSLabError when the band counts differ."""
    checked = [check_pair(p) for p in pairs]
    bands = {c[0] for c in checked}
    if len(bands) != 1:
        raise RSLabError(f"the training pairs have different band counts: {sorted(bands)}")
    return bands.pop(), [(h, w) for _, h, w in checked]


def fill_nodata(before: np.ndarray, after: np.ndarray, valid: np.ndarray,
                fill: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Both dates (float32) with the pixels not valid in both set to `fill` (the model's band means).

    The one treatment of nodata for the change model, in training, validation and detection alike: a
    NaN fed to the network spreads through its global pooling to the whole tile (NaN weights after one
    training step), and a -9999 makes the validation F1 meaningless beside what detection then gives.
    """
    before, after = before.astype(np.float32), after.astype(np.float32)
    if not valid.all():
        values = np.asarray(fill, np.float32)[:, None]
        before[:, ~valid] = values
        after[:, ~valid] = values
    return before, after


class PairSampler:
    """Random training crops (with flips, 90-degree turns and date swaps) from a list of pairs.

    Two further augmentations, departures from METHODS.md for our tiny training
    sets (a few dozen tiles), both off when their probability is 0:

    - `jitter`: each date gets its own brightness gain and offset, so the model
      does not learn illumination differences between dates as change;
    - `paste`: the changed pixels of another training crop (its after image
      where its label is set) are pasted into this crop's after image and
      labelled as change, which multiplies the kinds of change the model sees.

    Pairs up to IN_MEMORY_PIXELS each are read whole once, while their total stays under IN_MEMORY_BYTES
    (a folder of 637 LEVIR-CD pairs of 1024 x 1024 would otherwise hold 19 GB); the others are read by
    windows for each crop. `check` (a cancel check) runs before each whole read. With `fill` (the
    model's band means) nodata pixels and the padding of crops larger than a raster hold those values,
    as detection feeds them (fill_nodata).
    """

    def __init__(self, pairs: Sequence[ChangePair], crop: int, seed: int = 0,
                 jitter: float = 0.0, paste: float = 0.0, coding: str = "binary",
                 centred: Optional[bool] = None, check: Optional[Callable[[], None]] = None,
                 fill: Optional[Sequence[float]] = None) -> None:
        if not pairs:
            raise RSLabError("no training pairs were given")
        self.pairs = list(pairs)
        self.fill = fill
        self.coding = coding  # how the label rasters read (core/change_reference.py)
        self.crop = crop
        self.jitter = jitter
        self.paste = paste
        self.rng = np.random.default_rng(seed)
        self.bands, self.shapes = pair_shapes(self.pairs)
        self.cache = {}
        cached = 0  # bytes: two float32 dates, a float32 label, the valid and image-valid masks per pixel
        pixel_bytes = 2 * 4 * self.bands + 4 + 2
        for i, (pair, (h, w)) in enumerate(zip(self.pairs, self.shapes)):
            if h * w <= IN_MEMORY_PIXELS and cached + h * w * pixel_bytes <= IN_MEMORY_BYTES:
                if check is not None:
                    check()
                self.cache[i] = read_pair_masks(pair, Window(0, 0, w, h), coding, fill)
                cached += h * w * pixel_bytes
        # partial labels: crops centred on labelled pixels (see LabelledPixels); else anywhere
        self.centred = coding == "partial" if centred is None else centred
        self.labelled: List[LabelledPixels] = []
        if self.centred:
            self.labelled = [LabelledPixels(pair, shape, crop, coding, self.cache.get(i, (None,) * 5)[3])
                             for i, (pair, shape) in enumerate(zip(self.pairs, self.shapes))]
            weights = np.array([index.total for index in self.labelled], dtype=np.float64)
            if not weights.sum():
                raise RSLabError("the training labels have no labelled pixel")
        else:
            weights = np.array([h * w for h, w in self.shapes], dtype=np.float64)
        self.weights = weights / weights.sum()

    def _window(self, index: int) -> Window:
        h, w = self.shapes[index]
        ch, cw = min(self.crop, h), min(self.crop, w)
        if self.centred:  # around a labelled pixel drawn uniformly from all of the pair's
            row, col = self.labelled[index].draw(self.rng)
            r = min(max(row - ch // 2, 0), h - ch)
            c = min(max(col - cw // 2, 0), w - cw)
        else:
            r = int(self.rng.integers(0, h - ch + 1))
            c = int(self.rng.integers(0, w - cw + 1))
        return Window(c, r, cw, ch)

    def sample(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One augmented crop: before, after (bands, s, s) float32, label and valid (s, s)."""
        i = int(self.rng.choice(len(self.pairs), p=self.weights))
        win = self._window(i)
        if i in self.cache:
            a, b, y, v, image = self.cache[i]
            sl = (slice(int(win.row_off), int(win.row_off + win.height)), slice(int(win.col_off), int(win.col_off + win.width)))
            a, b, y, v, image = a[(slice(None),) + sl], b[(slice(None),) + sl], y[sl], v[sl], image[sl]
        else:
            a, b, y, v, image = read_pair_masks(self.pairs[i], win, self.coding, self.fill)
        a, b, y, v, image = pad_to(a, b, y, v, image, self.crop, self.fill)
        if self.paste and self.rng.random() < self.paste:
            b, y, v = self._paste_changes(b, y, v, image)
        if self.jitter and self.rng.random() < self.jitter:
            a, b = self._photometric(a), self._photometric(b)
        if self.rng.random() < 0.5:
            a, b = b, a  # the change between two dates does not depend on their order
        k = int(self.rng.integers(0, 4))
        flip_h, flip_v = self.rng.random() < 0.5, self.rng.random() < 0.5

        def aug(x: np.ndarray) -> np.ndarray:
            x = np.rot90(x, k, axes=(-2, -1))
            if flip_h:
                x = x[..., ::-1]
            if flip_v:
                x = x[..., ::-1, :]
            return np.ascontiguousarray(x)

        return aug(a), aug(b), aug(y), aug(v)

    def _photometric(self, x: np.ndarray) -> np.ndarray:
        """One date's brightness gain (0.8..1.2) and offset (+-8 % of its mean), all bands alike."""
        gain = self.rng.uniform(0.8, 1.2)
        offset = self.rng.uniform(-0.08, 0.08) * float(x.mean())
        return (x * gain + offset).astype(np.float32)

    def _paste_changes(self, b: np.ndarray, y: np.ndarray, v: np.ndarray, image: np.ndarray):
        """Paste another in-memory crop's changed pixels (after image, label set) into this after image, where
        this crop has data in both dates (`image`: not padding, not nodata; labelled or not)."""
        donors = [i for i in self.cache if self.cache[i][2].any()]
        if not donors:
            return b, y, v
        j = donors[int(self.rng.integers(len(donors)))]
        _, db, dy, dv, _ = self.cache[j]
        h, w = dy.shape
        size = y.shape[0]
        r = int(self.rng.integers(0, max(h - size, 0) + 1))
        c = int(self.rng.integers(0, max(w - size, 0) + 1))
        db, dy, dv = db[:, r:r + size, c:c + size], dy[r:r + size, c:c + size], dv[r:r + size, c:c + size]
        take = np.zeros_like(y, dtype=bool)
        # only where this crop has data: padding and nodata stay out of the loss
        take[:dy.shape[0], :dy.shape[1]] = (dy > 0) & dv & image[:dy.shape[0], :dy.shape[1]]
        if not take.any():
            return b, y, v
        b, y, v = b.copy(), y.copy(), v.copy()
        b[:, :dy.shape[0], :dy.shape[1]] = np.where(take[None, :dy.shape[0], :dy.shape[1]], db, b[:, :dy.shape[0], :dy.shape[1]])
        y[take] = 1.0
        v[take] = True
        return b, y, v


class LabelledPixels:
    """Where a pair's labelled pixels are, to draw crop centres among them (partial labels).

    A reference drawn for part of a scene (a few polygons in a large image) leaves most
    uniformly drawn crops without a labelled pixel, and such a crop adds nothing to the
    loss; drawing each crop's centre uniformly from the labelled pixels gives every
    iteration something to learn from. Departure from METHODS.md (random crops of fully
    labelled tiles), which is silent on partial labels. The label is counted per block of
    the crop size (by windows, so a large label raster never sits in memory); a draw picks
    a block by its count, then a labelled pixel inside it.
    """

    def __init__(self, pair: ChangePair, shape: Tuple[int, int], block: int, coding: str,
                 valid: Optional[np.ndarray] = None) -> None:
        self.pair, self.coding, self.valid = pair, coding, valid
        h, w = shape
        self.blocks = partition(h, w, block)
        # one open of the label for all the blocks; none when the pair is in memory
        with gdal_env(), (open_raster(pair.label) if valid is None else nullcontext()) as lab:
            self.counts = np.array([int(self._mask(win, lab).sum()) for win in self.blocks], dtype=np.int64)
        self.total = int(self.counts.sum())

    def _mask(self, win: Window, label: Any = None) -> np.ndarray:
        """The labelled pixels of one block (the valid mask when the pair is in memory)."""
        rows = slice(int(win.row_off), int(win.row_off + win.height))
        cols = slice(int(win.col_off), int(win.col_off + win.width))
        if self.valid is not None:
            return self.valid[rows, cols]
        if label is not None:
            return read_reference(label, win, self.coding)[1]
        with gdal_env(), open_raster(self.pair.label) as lab:
            return read_reference(lab, win, self.coding)[1]

    def draw(self, rng: np.random.Generator) -> Tuple[int, int]:
        """(row, col) of a labelled pixel, each equally likely."""
        block = int(rng.choice(len(self.blocks), p=self.counts / self.total))
        win = self.blocks[block]
        rows, cols = np.nonzero(self._mask(win))
        k = int(rng.integers(len(rows)))
        return int(win.row_off) + int(rows[k]), int(win.col_off) + int(cols[k])


def read_pair(pair: ChangePair, window: Window, coding: str = "binary",
              fill: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """before, after (float32), label (float32 0/1) and valid mask for one window of a pair.

    The label raster is read under `coding` (core/change_reference.py); its
    unlabelled and nodata pixels are invalid, like nodata in either image. With
    `fill` (the model's band means), nodata in either image holds it (fill_nodata).
    """
    return read_pair_masks(pair, window, coding, fill)[:4]


def read_pair_masks(pair: ChangePair, window: Window, coding: str = "binary",
                    fill: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, ...]:
    """read_pair's four arrays and the image mask: where both dates hold data, labelled or not."""
    with gdal_env(), open_raster(pair.before) as a, open_raster(pair.after) as b, open_raster(pair.label) as lab:
        xa, va = read_window(a, window)
        xb, vb = read_window(b, window)
        changed, labelled = read_reference(lab, window, coding)
    image = va & vb
    if fill is not None:
        xa, xb = fill_nodata(xa, xb, image, fill)
    return xa.astype(np.float32), xb.astype(np.float32), changed.astype(np.float32), image & labelled, image


def pad_to(a: np.ndarray, b: np.ndarray, y: np.ndarray, v: np.ndarray, image: np.ndarray, size: int,
           fill: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pad crops smaller than `size` (small rasters) with invalid pixels, outside the image mask (holding
    `fill`, else 0)."""
    h, w = y.shape
    if h >= size and w >= size:
        return a, b, y, v, image
    pad2 = ((0, max(0, size - h)), (0, max(0, size - w)))
    a, b = np.pad(a, ((0, 0),) + pad2), np.pad(b, ((0, 0),) + pad2)
    y, v, image = np.pad(y, pad2), np.pad(v, pad2), np.pad(image, pad2)
    if fill is not None:  # the padding (nodata inside was filled when read)
        a, b = fill_nodata(a, b, image, fill)
    return a, b, y, v, image


def band_statistics(paths: Sequence[str], max_pixels: int = 2_000_000,
                    check: Callable[[], None] = lambda: None) -> Tuple[List[float], List[float]]:
    """Per-band mean and std over the valid pixels of the rasters (decimated reads on large ones); `check`, a
    job's cancel check, runs before each read."""
    sums, sq, count = None, None, 0
    per_raster = max(1, max_pixels // max(1, len(paths)))
    for path in paths:
        check()
        with gdal_env(), open_raster(path) as ds:
            data, mask = read_decimated(ds, per_raster)
        values = data[:, mask].astype(np.float64)
        sums = values.sum(1) if sums is None else sums + values.sum(1)
        sq = (values ** 2).sum(1) if sq is None else sq + (values ** 2).sum(1)
        count += values.shape[1]
    if not count:
        raise RSLabError("the images have no valid pixels")
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 1e-12))
    return [float(m) for m in mean], [float(s) for s in std]


def default_normalisation(pairs: Sequence[ChangePair], bands: int) -> Tuple[List[float], List[float]]:
    """ImageNet statistics for 8-bit RGB; per-band statistics of the data for other sensors."""
    with gdal_env(), open_raster(pairs[0].before) as ds:
        dtype = ds.dtypes[0]
    if bands == 3 and dtype == "uint8":
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return band_statistics([path for pair in pairs for path in (pair.before, pair.after)])



VALIDATION_SHARE = 0.2  # of a training folder's pairs held out for validation when no validation pairs are given


def training_split(pairs: Sequence[ChangePair], validation: Optional[Sequence[ChangePair]] = None,
                   seed: int = 0) -> Tuple[List[ChangePair], List[ChangePair], Optional[str]]:
    """(train, validation, note) as every front end splits (the Train dialog and Processing held out
    different pairs of one folder, and only Processing took a folder of one pair): the `validation` pairs
    when given, else VALIDATION_SHARE of `pairs` held out by `split_validation`. The note says when the
    checkpoint will be chosen on pairs it trains on (one pair; validation pairs that are training pairs)."""
    if validation:
        seen = {(os.path.realpath(p.before), os.path.realpath(p.after)) for p in pairs}
        both = [p.name for p in validation if (os.path.realpath(p.before), os.path.realpath(p.after)) in seen]
        note = (f"the validation pairs {', '.join(both)} are training pairs too: the validation F1 is measured on "
                "data the model has seen, and the checkpoint kept is chosen on it") if both else None
        return list(pairs), list(validation), note
    train, val = split_validation(pairs, VALIDATION_SHARE, seed)
    note = ("only one training pair: it is also the validation pair, so the checkpoint kept is chosen on data "
            "the model has seen (give a validation folder to avoid that)") if train == val else None
    return train, val, note


def split_validation(pairs: Sequence[ChangePair], fraction: float = 0.2, seed: int = 0) -> Tuple[List[ChangePair], List[ChangePair]]:
    """(train, validation): hold out `fraction` of the pairs (at least one), chosen reproducibly by `seed`.

    A single pair cannot be split: it is used for both, and training then
    picks the checkpoint on data it has seen (the caller should say so).
    """
    pairs = list(pairs)
    if not pairs:
        raise RSLabError("no training pairs were given")
    if len(pairs) == 1:
        return pairs, pairs
    count = max(1, int(round(len(pairs) * fraction)))
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = set(order[:count].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]
