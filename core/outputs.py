"""Outputs written under a temporary name and renamed only on success; folders for a job's work files.

A job opens `PendingOutputs` for all the files it will write, writes to
`pending.temp(path)`, and the files appear under their real names only when
the `with` block ends without an exception. On any exception (bad input
found late, cancellation, a crash in the model) every temporary file and its
GDAL sidecars are removed, so a failed job never leaves a partial output that
could be mistaken for a result.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Type, Union

from .errors import RSLabError

PathLike = Union[str, "os.PathLike[str]"]

_SIDECARS = (".aux.xml", ".ovr", ".msk")
PARTIAL_PREFIX = ".rslab-partial-"  # an output being written (renamed to its own name when complete)


def room_left(path: PathLike) -> str:
    """'1.2 GB free in <folder>' for the folder that holds `path` (for messages about failed writes)."""
    folder = Path(os.fspath(path)).expanduser().resolve().parent
    try:
        return f"{_gigabytes(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        return f"free space in {folder} unknown"


def _first_line_without(exc: BaseException, path: PathLike, name: str) -> str:
    """GDAL's message, first line, with the temporary file's path (GDAL names it) replaced by `name`."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace(f"{os.fspath(path)}: ", "").replace(os.fspath(path), name)


def write_failed(path: PathLike, exc: BaseException, what: str) -> RSLabError:
    """The error for outputs GDAL could not write or read back (a full disk, mostly): it says `what` failed
    ("could not write the outputs") and the room left, not the name of a temporary file."""
    return RSLabError(f"{what} ({_first_line_without(exc, path, 'the output')}); {room_left(path)}: "
                      "is the disk full?")


def write_bytes(path: PathLike, data: bytes, what: str) -> None:
    """`data` in `path` (a job's temporary name): a write that fails (a full disk) raises `write_failed`, saying
    `what` failed and the room left, instead of a bare OSError and its traceback. Files serialised by torch or
    onnx come here as bytes: torch.jit.save straight to a full disk aborted the whole process (QGIS with it)."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise write_failed(path, exc, what) from exc


def write_json(path: PathLike, data: Any, **options: Any) -> None:
    """`data` as JSON (json.dumps's `options`) in `path`, through `write_bytes`."""
    write_bytes(path, (json.dumps(data, **options) + "\n").encode("utf-8"), "could not write the report")


def check_complete(path: PathLike, final_name: str) -> None:
    """RSLabError unless the GeoTIFF at `path` opens and the file holds every block its directory lists.

    GDAL writes its cached blocks and the directory when the file is closed, and a write that fails then
    (a disk that fills) raises nothing through rasterio: the job went on, and a truncated file was renamed
    into place as a result.
    """
    from .gdal_exceptions import gdal_exceptions

    size = os.path.getsize(path)
    detail = None
    try:
        with gdal_exceptions() as gdal:
            _check_blocks(gdal.Open(os.fspath(path)), size)
    except RuntimeError as exc:
        detail = _first_line_without(exc, path, final_name)
    # raised here, not in the except clause: the RuntimeError's traceback (kept as the new error's context)
    # held the open dataset, and the caller's deletion of the file met an open handle (Windows refuses it)
    if detail is not None:
        raise RSLabError(f"{final_name} was not written completely ({detail}); {room_left(path)}: "
                         "is the disk full?")


def _check_blocks(ds: Any, size: int) -> None:
    """RuntimeError if a block of the open GeoTIFF `ds` (or of its overviews) lies past `size` bytes."""
    for index in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(index)
        levels = [band] + [band.GetOverview(level) for level in range(band.GetOverviewCount())]
        for level, image in enumerate(levels):
            block_x, block_y = image.GetBlockSize()
            for y in range((image.YSize + block_y - 1) // block_y):
                for x in range((image.XSize + block_x - 1) // block_x):
                    offset = image.GetMetadataItem(f"BLOCK_OFFSET_{x}_{y}", "TIFF")
                    length = image.GetMetadataItem(f"BLOCK_SIZE_{x}_{y}", "TIFF")
                    if offset and length and int(offset) + int(length) > size:
                        where = f" of overview {level}" if level else ""
                        raise RuntimeError(f"block ({x}, {y}) of band {index}{where} lies past the end of the file")


def _tiff_or_empty(path: Path) -> bool:
    """Whether a file is a TIFF (or nothing at all): a report or a checkpoint named .tif is neither, and was
    said not to be 'written completely: is the disk full?'."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return not head or head[:2] in (b"II", b"MM")


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: symbolic links and spellings resolved, hard links too where both exist."""
    a, b = os.path.expanduser(a), os.path.expanduser(b)
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


RASTER_SUFFIXES = (".tif", ".tiff")  # every raster RS Lab writes is a GeoTIFF
NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows alike)


def check_name_length(path: PathLike) -> None:
    """RSLabError for a file or folder name longer than the file system takes (OSError 'File name too long'
    otherwise, deep inside a job or from Path.is_dir)."""
    for name in Path(os.fspath(path)).parts:
        size = len(os.fsencode(name))
        if size > NAME_MAX:
            raise RSLabError(f"the name {name[:40]}… is {size} bytes long; file names hold at most {NAME_MAX}: "
                             "choose a shorter name")


def check_output_paths(outputs: Mapping[str, Optional[PathLike]], inputs: Optional[Mapping[str, Optional[PathLike]]] = None,
                       rasters: Sequence[str] = ()) -> None:
    """RSLabError, before any work, for outputs that would replace an input or each other, or the wrong format.

    `outputs` and `inputs` map what each file is ("scores raster", "input image") to its path (None: not
    asked for); `rasters` names the outputs written as GeoTIFFs, which must be called .tif or .tiff (a
    GeoTIFF named .img or .vrt would mislead every other tool). Without this check an output naming its input
    replaced it when the job committed (a 193-band cube became a 1-band score raster), and two outputs naming
    one file left only the last one written.
    """
    given = [(what, path) for what, path in outputs.items() if path]
    for what, path in given:
        check_name_length(path)
        check_output_folder(path, what)
    for what in rasters:
        path = outputs.get(what)
        if path and os.path.splitext(os.fspath(path))[1].lower() not in RASTER_SUFFIXES:
            raise RSLabError(f"the {what} ({os.path.basename(path)}) is written as a GeoTIFF: give it a .tif name")
    for i, (what, path) in enumerate(given):
        for other, other_path in given[i + 1:]:
            if same_file(path, other_path):
                raise RSLabError(f"the {what} and the {other} are one file ({os.path.basename(path)}); "
                                 "give each output its own name")
        for source, source_path in (inputs or {}).items():
            if source_path and same_file(path, source_path):
                raise RSLabError(f"the {what} would replace the {source} ({os.path.basename(source_path)}); "
                                 "give the output another name")
            for behind in files_behind(source_path) if source_path else ():
                if same_file(path, behind):
                    raise RSLabError(f"the {what} would replace {os.path.basename(behind)}, which the {source} "
                                     f"({os.path.basename(source_path)}) reads; give the output another name")
            if source_path and os.path.isdir(source_path) and os.path.exists(path) and _inside(path, source_path):
                raise RSLabError(f"the {what} would replace {os.path.basename(path)} in the {source} folder "
                                 f"({os.path.basename(os.path.normpath(source_path))}); give the output another name")


def files_behind(path: PathLike) -> List[str]:
    """The other files GDAL reads for the raster at `path`: an ENVI header, a VRT's sources, a .msk mask
    (an output named after one of them passed the check and destroyed the input); none for a file GDAL does
    not read as a raster, or a folder."""
    from .gdal_exceptions import gdal_exceptions

    if not os.path.isfile(path):
        return []
    try:
        with gdal_exceptions() as gdal:
            gdal.PushErrorHandler("CPLQuietErrorHandler")  # a checkpoint or .mat input is no raster: no log line
            try:
                ds = gdal.OpenEx(os.fspath(path), gdal.OF_RASTER)
                files = ds.GetFileList() or []
                ds = None
            finally:
                gdal.PopErrorHandler()
    except RuntimeError:
        return []
    return [name for name in files if not same_file(name, path)]


def _inside(path: PathLike, folder: PathLike) -> bool:
    """Whether `path` lies somewhere under `folder` (links resolved)."""
    real = Path(os.path.realpath(os.path.expanduser(path)))
    return Path(os.path.realpath(os.path.expanduser(folder))) in real.parents


def check_output_folder(path: PathLike, what: str = "output") -> None:
    """RSLabError unless `path`'s folder is one that exists and takes files, or can be made under one: a path
    running through a file (out.tif/x.tif), or a folder not writable, were found only when the output was
    written, after the whole job, and the message named an internal temporary file."""
    final = Path(os.path.realpath(Path(os.fspath(path)).expanduser()))
    existing = final.parent
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except PermissionError:  # a folder above it that this user may not enter
        raise RSLabError(f"the {what} ({final.name}) cannot be written: a folder on the way to {final.parent} "
                         "may not be entered") from None
    if not existing.is_dir():
        raise RSLabError(f"the {what} ({final.name}) cannot go into {final.parent}: {existing} is a file, "
                         "not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RSLabError(f"the {what} ({final.name}) cannot be written: the folder {existing} is not writable")


def _remove_with_sidecars(path: Path) -> None:
    for candidate in [path] + [Path(str(path) + s) for s in _SIDECARS]:
        try:
            candidate.unlink()
        except OSError:  # missing, or a name too long with a sidecar suffix: cleanup never hides the error handled
            pass


class PendingOutputs:
    """Temporary names for a job's outputs, committed together on success."""

    def __init__(self) -> None:
        self._pending: Dict[Path, Path] = {}
        self._created: list = []  # folders made for outputs, removed again if the job fails

    def temp(self, final_path: PathLike) -> str:
        """Return the temporary path to write in place of `final_path`."""
        check_name_length(final_path)
        final = Path(os.path.realpath(Path(final_path).expanduser()))
        if final in self._pending:
            raise RSLabError(f"two outputs name one file ({final.name}); give each output its own name")
        if final.is_dir():
            raise RSLabError(f"output path {final} is a folder; give a file name")
        if not final.parent.exists():
            missing = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                self._created.extend(missing)  # deepest first
            except OSError as exc:
                raise RSLabError(f"cannot create the output folder {final.parent}: {exc.strerror}") from exc
        if not os.access(final.parent, os.W_OK):
            raise RSLabError(f"the output folder {final.parent} is not writable")
        # Keep the extension last so drivers that look at it still see it; a short name of its own, so a final
        # name near the file system's 255-byte limit still has a temporary name; one without an extension gets
        # one (torch.save refused a bare '.rslab-partial-…', after a whole training)
        tmp = final.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:12]}{final.suffix[:16] or '.partial'}")
        self._pending[final] = tmp
        return str(tmp)

    def commit(self) -> None:
        """Rename every temporary file to its final name."""
        for final, tmp in self._pending.items():
            if not tmp.exists():
                raise RSLabError(f"internal error: {final.name} was never written")
            if final.suffix.lower() in RASTER_SUFFIXES and _tiff_or_empty(tmp):
                check_complete(tmp, final.name)
        for final, tmp in self._pending.items():
            _remove_with_sidecars(final)
            os.replace(tmp, final)
            for suffix in _SIDECARS:
                side = Path(str(tmp) + suffix)
                if side.exists():
                    try:
                        os.replace(side, Path(str(final) + suffix))
                    except OSError:  # no room for the suffix in a name at the length limit: its metadata is lost
                        _remove_with_sidecars(side)
        self._pending.clear()

    def discard(self) -> None:
        """Remove every temporary file (and GDAL sidecars) written so far."""
        for tmp in self._pending.values():
            _remove_with_sidecars(tmp)
        self._pending.clear()
        for folder in self._created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                pass
        self._created = []

    def __enter__(self) -> "PendingOutputs":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:  # an output found incomplete: none is renamed into place, none is left
                self.discard()
                raise
        else:
            self.discard()


WORK_MARGIN = 1.1  # room asked for beyond a work file's estimated size (GDAL headers, estimates)
WORK_SLACK = 64 * 2**20  # and a little more, so the disk is not left completely full


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


@contextmanager
def work_folder(prefix: str, need_bytes: int, fallback: str, what: str) -> Iterator[str]:
    """A temporary folder with room for `need_bytes` of a job's work files, removed when the job ends.

    The system's temporary folder when it has the room, else `fallback` (the
    folder the job's outputs go to: the user chose that disk for this data),
    else an RSLabError naming the space needed and free in both, raised before
    any work starts: a large raster's work files would otherwise fill the disk
    (or, where the temporary folder is a tmpfs, the memory) after minutes of work.
    """
    want = need_bytes * WORK_MARGIN + WORK_SLACK if need_bytes > 0 else 0  # 0: a few small files (VRTs) at most
    free: Dict[str, int] = {}
    for folder in (tempfile.gettempdir(), fallback):
        if not folder or not os.path.isdir(folder) or folder in free:
            continue
        free[folder] = shutil.disk_usage(folder).free
        if free[folder] >= want:
            with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as path:
                yield path
            return
    places = "; ".join(f"{_gigabytes(room)} free in {folder}" for folder, room in free.items())
    raise RSLabError(f"{what} needs up to {_gigabytes(want)} of temporary disk space ({places}): free some "
                     "space, write the outputs to a folder on a larger disk, or set TMPDIR to one")
