"""A PNG quicklook of a change-detection run: before, after, change and uncertainty side by side.

    python scripts/quicklook.py BEFORE AFTER CHANGE UNCERTAINTY OUT.png [--report report.json]

Each panel is the raster read at up to 512 pixels wide (decimated, so big
rasters are fine). The change panel draws changed pixels in red over a grey
copy of the after image; the uncertainty panel uses the magma colour ramp.
With --report, prints the run's metrics and timings.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.errors import NotGeoreferencedWarning

warnings.simplefilter("ignore", NotGeoreferencedWarning)

PANEL = 512
# magma, 8 stops (matplotlib's), interpolated to 256 entries
_MAGMA = np.array([[0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122], [229, 80, 100],
                   [251, 135, 97], [252, 253, 191]], np.float64)


def _lut(stops: np.ndarray) -> np.ndarray:
    x = np.linspace(0, 1, len(stops))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, stops[:, c]) for c in range(3)], 1).astype(np.uint8)


def _read(path: str, size: int):
    with rasterio.open(path) as ds:
        scale = max(ds.width, ds.height) / size
        shape = (max(1, int(ds.height / scale)), max(1, int(ds.width / scale)))
        data = ds.read(out_shape=(ds.count,) + shape, resampling=rasterio.enums.Resampling.nearest)
        valid = ds.dataset_mask(out_shape=shape) > 0
    return data, valid


def _rgb(path: str, size: int) -> np.ndarray:
    data, valid = _read(path, size)
    bands = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, 0)
    out = np.zeros(bands.shape, np.float64)
    for i, band in enumerate(bands.astype(np.float64)):
        lo, hi = np.percentile(band[valid], [2, 98]) if valid.any() else (0, 1)
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-9), 0, 1)
    return (np.moveaxis(out, 0, 2) * 255).astype(np.uint8)


def quicklook(before: str, after: str, change: str, uncertainty: str, out: str, size: int = PANEL) -> None:
    a, b = _rgb(before, size), _rgb(after, size)
    mask, mask_valid = _read(change, size)
    grey = np.repeat(b.mean(axis=2, keepdims=True), 3, 2) * 0.6
    ch = grey.copy()
    ch[(mask[0] == 1) & mask_valid] = [230, 25, 75]
    unc, unc_valid = _read(uncertainty, size)
    u = _lut(_MAGMA)[np.clip(np.nan_to_num(unc[0]) * 255, 0, 255).astype(np.uint8)]
    u[~unc_valid] = 0
    panels = [("before", a), ("after", b), ("change (red)", ch.astype(np.uint8)), ("uncertainty (0 dark, 1 bright)", u)]
    h, w = a.shape[:2]
    canvas = Image.new("RGB", (4 * w + 50, h + 30), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, panel) in enumerate(panels):
        x = 10 + i * (w + 10)
        canvas.paste(Image.fromarray(panel), (x, 25))
        draw.text((x, 6), title, fill="black")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("change")
    parser.add_argument("uncertainty")
    parser.add_argument("out")
    parser.add_argument("--report")
    args = parser.parse_args()
    quicklook(args.before, args.after, args.change, args.uncertainty, args.out)
    if args.report:
        report = json.loads(Path(args.report).read_text())
        print(f"method {report['method']} on {report['device']}, {report['width']} x {report['height']} pixels, "
              f"{report['timings'].get('detect', 0):.2f} s")
        for note in report.get("notes", []):
            print("note:", note)
        for key, value in report.get("metrics", {}).items():
            print(f"  {key:16s} {value:.4f}" if isinstance(value, float) else f"  {key:16s} {value}")
    print(f"quicklook: {args.out}")


if __name__ == "__main__":
    main()
