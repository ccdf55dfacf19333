"""GeoTIFF / COG rasters in and out with rasterio, window by window, with the georeferencing exact.

Geometry convention (the same as every operator in ``toolkit.operators``): a low-resolution
pixel covers a block of ``s x s`` high-resolution pixels and sits at the block's centre. In
GDAL's corner-based geotransform this is simply ``transform @ Affine.scale(1 / s)`` (affine 3 spells the product ``@``) for the
finer grid: the top-left corner stays where it is, the pixel size divides by ``s`` along the
pixel axes (so a rotated or sheared transform keeps its rotation) and the bounds are unchanged.

Masks: a pixel is invalid where *every* selected band is masked (rasterio's ``dataset_mask``
rule, computed from the per-band masks so internal masks and NaN nodata count too), or where
any selected band holds NaN or Inf (a float raster without a nodata tag marks missing data so;
such a pixel is missing, not a value, and :meth:`RasterReader.check_has_data` counts them in a
:class:`NonFiniteWarning`). A raster without a CRS is read too: its output has no CRS either,
and one without any geotransform keeps none. Values are returned in data units as float32 ``(C, h, w)``. The writer buffers each 256 x 256 block
until it is complete and writes it once, so the output is compressed exactly once per block
and a scene larger than memory is never held whole.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from domains.files import NonFiniteWarning, check_decoded_size

__all__ = [
    "RASTER_SUFFIXES",
    "SUPPORTED_DTYPES",
    "RasterFileError",
    "NonFiniteWarning",
    "RasterMeta",
    "RasterReader",
    "RasterWriter",
    "block_windows",
    "crop_raster",
    "finer_transform",
    "coarser_transform",
    "is_georeferenced",
    "is_raster",
    "read_raster",
    "to_dtype",
]

RASTER_SUFFIXES = (".tif", ".tiff")
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")
BLOCK = 256

Slices = tuple[slice, slice]


class RasterFileError(ValueError):
    """A raster is missing, corrupt, not a raster, or all nodata (the message names the file)."""


@dataclass(frozen=True)
class RasterMeta:
    """What is needed to read a raster and to write a result like it.

    Attributes:
        path: the file.
        bands: 1-based band indexes in the file that were selected (rasterio numbering).
        width, height: size in pixels.
        dtype: numpy dtype name of the bands (one of :data:`SUPPORTED_DTYPES`).
        nodata: nodata value (``None`` when the file has none; may be NaN for float32).
        crs: the ``rasterio.crs.CRS``.
        transform: the ``affine.Affine`` geotransform (pixel corner -> CRS coordinates).
        descriptions, colorinterp, units, scales, offsets: per selected band, as in the file.
        tags: dataset-level metadata tags.
    """

    path: Path
    bands: tuple[int, ...]
    width: int
    height: int
    dtype: str
    nodata: float | None
    crs: Any
    transform: Any
    descriptions: tuple[str | None, ...]
    colorinterp: tuple[Any, ...] = ()
    units: tuple[str | None, ...] = ()
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Number of selected bands (channels of the arrays read)."""
        return len(self.bands)

    @property
    def shape(self) -> tuple[int, int]:
        """Spatial shape ``(height, width)``."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the four corners in CRS units (any rotation)."""
        xs, ys = zip(*(self.transform @ (c, r) for c, r in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))))
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def georeferenced(self) -> bool:
        """Whether the raster is placed anywhere: a CRS, or a geotransform other than the identity."""
        return self.crs is not None or not self.transform.is_identity

    @property
    def float(self) -> bool:
        """Whether the data type is floating point (it can hold NaN, so it can mark missing pixels without nodata)."""
        return bool(np.issubdtype(np.dtype(self.dtype), np.floating))

    @property
    def marks_missing(self) -> bool:
        """Whether missing pixels can be written: a nodata value, or NaN in a float raster."""
        return self.nodata is not None or self.float

    def resized(self, height: int, width: int, transform: Any) -> RasterMeta:
        """The same bands and metadata on another grid."""
        return replace(self, height=int(height), width=int(width), transform=transform)

    def rescaled(self, factors: Sequence[int], finer: bool = True) -> RasterMeta:
        """The grid ``factors = (f_rows, f_cols)`` times finer (or coarser: sizes rounded down) over the same bounds.

        A raster without georeferencing keeps the identity transform (it is in pixels, and so is the result).
        """
        fr, fc = factors
        h, w = (self.height * fr, self.width * fc) if finer else (self.height // fr, self.width // fc)
        if not self.georeferenced:
            return self.resized(h, w, self.transform)
        return self.resized(h, w, (finer_transform if finer else coarser_transform)(self.transform, factors))


def is_georeferenced(path: str | Path) -> bool:
    """Whether ``path`` is a TIFF that carries a coordinate reference system (a GeoTIFF/COG, not a plain image).

    ``False`` when rasterio is missing or cannot read the file (the reader says why, later).
    """
    return _tiff_header(path, lambda src: src.crs is not None)


def is_raster(path: str | Path) -> bool:
    """Whether ``path`` is a TIFF for this domain: georeferenced, or with bands a picture cannot have.

    Bands a picture cannot have: more than 4 (grey, grey + alpha, RGB, RGBA), or samples that
    are not 8- or 16-bit unsigned integers (float32, int16). A 16-bit RGB TIFF without a CRS
    stays a photo.
    """
    return _tiff_header(path, lambda src: src.crs is not None or src.count > 4 or any(d not in ("uint8", "uint16") for d in src.dtypes))


def _tiff_header(path: str | Path, test: Any) -> bool:
    """``test(dataset)`` on an open TIFF; ``False`` for other files and those rasterio cannot open (the reader says why, later)."""
    if not str(path).lower().endswith(RASTER_SUFFIXES) or not Path(path).is_file():
        return False
    try:
        import rasterio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                return bool(test(src))
    except Exception:  # noqa: BLE001 - unreadable here means "not a raster"
        return False


def finer_transform(transform: Any, factors: Sequence[int]) -> Any:
    """Geotransform of the grid ``factors = (f_rows, f_cols)`` times finer over the same bounds."""
    from affine import Affine

    fr, fc = factors
    return transform @ Affine.scale(1.0 / fc, 1.0 / fr)


def coarser_transform(transform: Any, factors: Sequence[int]) -> Any:
    """Geotransform of the grid ``factors`` times coarser (the inverse of :func:`finer_transform`)."""
    from affine import Affine

    fr, fc = factors
    return transform @ Affine.scale(float(fc), float(fr))


def block_windows(shape: Sequence[int], size: int | Sequence[int] = 1024) -> Iterator[Slices]:
    """Row-major ``(rows, cols)`` slices of at most ``size`` covering a ``(height, width)`` grid."""
    sr, sc = (size, size) if isinstance(size, int) else tuple(size)
    h, w = shape
    for i in range(0, h, sr):
        for j in range(0, w, sc):
            yield slice(i, min(i + sr, h)), slice(j, min(j + sc, w))


def _window(sl: Slices) -> Any:
    from rasterio.windows import Window

    rows, cols = sl
    return Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)


class RasterReader:
    """An open raster with selected bands; read windows as float32 data units plus a validity mask.

    Use as a context manager. Opening checks everything that can be checked without reading the
    pixels: the file exists and is a raster, the band indexes exist, the dtype is supported, the
    size is within the limit on decoded pixels (:func:`domains.files.check_decoded_size`), and
    (with ``require_crs``) there is a CRS. Read failures of a corrupt file are
    reported as :class:`RasterFileError` naming the file.

    Args:
        path: GeoTIFF or COG (any GDAL raster opens, but outputs are GeoTIFF).
        bands: 1-based band indexes to read (e.g. ``[2, 3, 4]``); ``None`` reads all bands.
        require_crs: refuse a raster without a CRS (for outputs that must line up in a GIS).
    """

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None, require_crs: bool = False) -> None:
        import rasterio
        from rasterio.errors import RasterioError

        self.path = Path(path)
        if not self.path.exists():
            raise RasterFileError(f"{self.path}: file not found")
        if not self.path.is_file():
            raise RasterFileError(f"{self.path}: not a file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning: checked below with a clearer message
                self.ds = rasterio.open(self.path)
        except RasterioError as exc:
            raise RasterFileError(f"{self.path}: not a readable raster ({_first_line(exc)})") from None
        try:
            self.meta = self._describe(bands, require_crs)
        except BaseException:
            self.ds.close()
            raise

    def _describe(self, bands: Sequence[int] | None, require_crs: bool) -> RasterMeta:
        ds = self.ds
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise RasterFileError(f"{self.path}: empty raster ({ds.count} bands, {ds.width}x{ds.height})")
        idx = tuple(range(1, ds.count + 1)) if bands is None else tuple(int(b) for b in bands)
        if not idx:
            raise RasterFileError(f"{self.path}: no bands selected")
        bad = [b for b in idx if not 1 <= b <= ds.count]
        if bad:
            raise RasterFileError(f"{self.path}: band(s) {bad} do not exist; the raster has bands 1..{ds.count}")
        if len(set(idx)) != len(idx):
            raise RasterFileError(f"{self.path}: band(s) selected twice in {list(idx)}")
        dtypes = {ds.dtypes[b - 1] for b in idx}
        if len(dtypes) != 1:
            raise RasterFileError(f"{self.path}: the selected bands have different data types {sorted(dtypes)}")
        dtype = dtypes.pop()
        if dtype not in SUPPORTED_DTYPES:
            raise RasterFileError(f"{self.path}: data type {dtype} is not supported (supported: {', '.join(SUPPORTED_DTYPES)})")
        check_decoded_size(self.path, ds.width * ds.height, "raster")
        if require_crs and ds.crs is None:
            raise RasterFileError(
                f"{self.path}: raster has no CRS (coordinate reference system); the output could not be "
                "placed on a map. Assign one first, e.g. gdal_edit.py -a_srs EPSG:32616"
            )
        pick = [b - 1 for b in idx]
        return RasterMeta(
            path=self.path,
            bands=idx,
            width=ds.width,
            height=ds.height,
            dtype=dtype,
            nodata=None if ds.nodata is None else float(ds.nodata),
            crs=ds.crs,
            transform=ds.transform,
            descriptions=tuple(ds.descriptions[i] for i in pick),
            colorinterp=tuple(ds.colorinterp[i] for i in pick),
            units=tuple(ds.units[i] for i in pick),
            scales=tuple(float(ds.scales[i]) for i in pick),
            offsets=tuple(float(ds.offsets[i]) for i in pick),
            tags=dict(ds.tags()),
        )

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ds.close()

    def read(self, window: Slices | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window.

        Args:
            window: ``(rows, cols)`` slices inside the raster; ``None`` reads it all.

        Returns:
            ``data`` ``(C, h, w)`` float32 in data units (nodata pixels hold the raw nodata value,
            non-finite ones NaN or Inf) and ``valid`` ``(h, w)`` bool, false where every
            selected band is masked or any is not finite.
        """
        data = self.read_data(window)
        return data, self._masked(window) & _finite(data)

    def read_data(self, window: Slices | None = None, native: bool = False) -> np.ndarray:
        """``(C, h, w)`` float32 data units of a window (see :meth:`read`); the file's dtype with ``native``."""
        from rasterio.errors import RasterioError

        w = None if window is None else _window(self._check(window))
        try:
            return self.ds.read(list(self.meta.bands), window=w, out_dtype=None if native else "float32")
        except RasterioError as exc:
            raise RasterFileError(f"{self.path}: cannot read pixels, the file may be corrupt or truncated ({_first_line(exc)})") from None

    def read_valid(self, window: Slices | None = None) -> np.ndarray:
        """``(h, w)`` bool validity of a window: true where any selected band holds data and all are finite."""
        valid = self._masked(window)
        return valid & _finite(self.read_data(window)) if self.meta.float else valid

    def _masked(self, window: Slices | None) -> np.ndarray:
        """``(h, w)`` bool: true where any selected band is unmasked (nodata and mask bands only)."""
        from rasterio.errors import RasterioError

        w = None if window is None else _window(self._check(window))
        try:
            masks = self.ds.read_masks(list(self.meta.bands), window=w)
        except RasterioError as exc:
            raise RasterFileError(f"{self.path}: cannot read pixels, the file may be corrupt or truncated ({_first_line(exc)})") from None
        return (masks > 0).any(axis=0)

    def _check(self, window: Slices) -> Slices:
        rows, cols = window
        if not (0 <= rows.start < rows.stop <= self.meta.height and 0 <= cols.start < cols.stop <= self.meta.width):
            raise ValueError(f"{self.path}: window {window} is outside the raster {self.meta.shape}")
        return window

    def check_has_data(self, chunk: int = 1024) -> int:
        """Raise :class:`RasterFileError` if every pixel is nodata; count the non-finite pixels.

        Integer rasters stop at the first valid window. Float rasters are read whole, window by
        window, to count the pixels that are not nodata but hold NaN or Inf (they are treated as
        nodata, with a :class:`NonFiniteWarning`), and to refuse a band without any finite value.
        Either way the pixel data of the first window is decoded, so a file whose pixels cannot
        be decoded fails here, before any output is created.

        Returns:
            The number of non-finite pixels (0 for integer rasters).
        """
        has_data, nonfinite = False, 0
        finite_bands = np.zeros(self.meta.count, dtype=bool)
        for sl in block_windows(self.meta.shape, chunk):
            data, masked = self.read_data(sl), self._masked(sl)
            ok = np.isfinite(data)
            finite_bands |= ok.any(axis=(1, 2))
            nonfinite += int((masked & ~ok.all(axis=0)).sum())
            has_data |= bool((masked & ok.all(axis=0)).any())
            if has_data and not self.meta.float:
                return 0
        empty = [b for b, ok in zip(self.meta.bands, finite_bands) if not ok]
        if empty:
            raise RasterFileError(f"{self.path}: band(s) {empty} hold no finite value (every pixel NaN or Inf)")
        if not has_data:
            raise RasterFileError(f"{self.path}: every pixel is nodata (nodata={self.meta.nodata}); nothing to process")
        if nonfinite:
            warnings.warn(f"{self.path}: {nonfinite} non-finite pixels treated as nodata", NonFiniteWarning, stacklevel=2)
        return nonfinite


def _finite(data: np.ndarray) -> np.ndarray:
    """``(h, w)`` bool: true where every band of ``data`` ``(C, h, w)`` is finite."""
    return np.isfinite(data).all(axis=0)


def read_raster(path: str | Path, bands: Sequence[int] | None = None, require_crs: bool = False) -> tuple[np.ndarray, np.ndarray, RasterMeta]:
    """Read a whole raster: ``(C, H, W)`` float32 data units, ``(H, W)`` validity and metadata."""
    with RasterReader(path, bands, require_crs) as r:
        data, valid = r.read()
        return data, valid, r.meta


def dtype_range(dtype: str) -> tuple[float, float]:
    """Smallest and largest value of a raster data type."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    info_f = np.finfo(dt)
    return float(info_f.min), float(info_f.max)


def to_dtype(data: np.ndarray, dtype: str, nodata: float | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """Convert float data ``(C, h, w)`` to a raster dtype: rounded (integers) and clipped to its range.

    Where ``valid`` is false every band gets ``nodata``. Where it is true, a value that would
    equal ``nodata`` is moved one unit towards the inside of the range (a float32 by the
    smallest step), so valid data is never read back as nodata.
    """
    dt = np.dtype(dtype)
    lo, hi = dtype_range(dtype)
    arr = np.asarray(data, dtype=np.float64)
    arr = np.where(np.isfinite(arr), arr, 0.0 if nodata is None or np.isnan(nodata) else nodata)
    if np.issubdtype(dt, np.integer):
        arr = np.round(arr)
    arr = np.clip(arr, lo, hi)
    out = arr.astype(dt)
    if nodata is not None and not np.isnan(nodata):
        nd = dt.type(nodata)
        hit = out == nd
        if valid is not None:
            hit &= valid[None]
        if hit.any():
            if np.issubdtype(dt, np.integer):
                step = dt.type(1)
                out[hit] = nd + step if nd < hi else nd - step
            else:
                out[hit] = np.nextafter(nd, dt.type(0) if nd != 0 else dt.type(1), dtype=dt)
    if nodata is not None and valid is not None:
        out[:, ~valid] = dt.type(nodata)
    return out


class RasterWriter:
    """A tiled (256 x 256), deflate-compressed GeoTIFF written window by window, like a template raster.

    Windows may arrive in any order and shape; each 256 x 256 block is buffered (in the output
    dtype) until all its pixels have been written, then written and compressed once, so the
    file does not grow from rewritten blocks and memory holds only the incomplete blocks.
    Values are rounded and clipped to the template's dtype; nodata, band descriptions, colour
    interpretation, units, scales, offsets and tags are kept. Missing pixels are written as
    nodata, or as NaN in a float raster without one. Use :func:`domains.files.write_atomic`
    around it so a failure leaves no file behind.

    Args:
        path: file to create (normally a temporary file beside the target).
        meta: template: bands, dtype, nodata, CRS and band metadata; its ``width``, ``height``
            and ``transform`` are the output grid (see :meth:`RasterMeta.resized`).
    """

    def __init__(self, path: str | Path, meta: RasterMeta, block: int = BLOCK) -> None:
        import rasterio

        self.meta, self.block = meta, int(block)
        dtype = np.dtype(meta.dtype)
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": meta.width,
            "height": meta.height,
            "count": meta.count,
            "dtype": meta.dtype,
            "crs": meta.crs,
            "transform": meta.transform,
            "nodata": meta.nodata,
            "tiled": True,
            "blockxsize": self.block,
            "blockysize": self.block,
            "compress": "deflate",
            "predictor": 3 if np.issubdtype(dtype, np.floating) else 2,
            "interleave": "pixel",
            "BIGTIFF": "IF_SAFER",
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: a raster without georeferencing stays so
            self.ds = rasterio.open(Path(path), "w", **profile)
        for i, desc in enumerate(meta.descriptions, start=1):
            if desc:
                self.ds.set_band_description(i, desc)
        if meta.colorinterp and len(meta.colorinterp) == meta.count:
            try:
                self.ds.colorinterp = list(meta.colorinterp)
            except Exception:  # noqa: BLE001 - GDAL refuses some combinations (e.g. RGB on 2 bands); not essential
                pass
        if meta.units and any(meta.units):
            self.ds.units = [u or "" for u in meta.units]
        if meta.scales and any(s != 1.0 for s in meta.scales):
            self.ds.scales = list(meta.scales)
        if meta.offsets and any(o != 0.0 for o in meta.offsets):
            self.ds.offsets = list(meta.offsets)
        if meta.tags:
            self.ds.update_tags(**meta.tags)
        self._pending: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.blocks_written = 0

    def __enter__(self) -> RasterWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(flush=exc_type is None)

    def _block_slices(self, bi: int, bj: int) -> Slices:
        b, m = self.block, self.meta
        return slice(bi * b, min((bi + 1) * b, m.height)), slice(bj * b, min((bj + 1) * b, m.width))

    def write(self, window: Slices, data: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write ``data`` ``(C, h, w)`` (float data units or the output dtype) at ``window``.

        Args:
            window: ``(rows, cols)`` slices of the output grid.
            data: values for the window.
            valid: optional ``(h, w)`` bool; where false the pixel is written as nodata (NaN in a
                float raster without nodata).
        """
        rows, cols = window
        m = self.meta
        if not (0 <= rows.start < rows.stop <= m.height and 0 <= cols.start < cols.stop <= m.width):
            raise ValueError(f"window {window} is outside the output grid {m.shape}")
        if data.shape != (m.count, rows.stop - rows.start, cols.stop - cols.start):
            raise ValueError(f"data of shape {data.shape} does not fit window {window} with {m.count} bands")
        if valid is not None and not m.marks_missing and not valid.all():
            raise ValueError(f"{m.path}: invalid pixels to write but the raster has no nodata value")
        out = to_dtype(data, m.dtype, m.nodata, valid)
        if valid is not None and m.nodata is None and m.float:
            out[:, ~valid] = np.nan
        b = self.block
        for bi in range(rows.start // b, (rows.stop - 1) // b + 1):
            for bj in range(cols.start // b, (cols.stop - 1) // b + 1):
                br, bc = self._block_slices(bi, bj)
                r0, r1 = max(rows.start, br.start), min(rows.stop, br.stop)
                c0, c1 = max(cols.start, bc.start), min(cols.stop, bc.stop)
                key = (bi, bj)
                if key not in self._pending:
                    shape = (br.stop - br.start, bc.stop - bc.start)
                    self._pending[key] = (np.zeros((m.count, *shape), dtype=out.dtype), np.zeros(shape, dtype=bool))
                buf, filled = self._pending[key]
                dst = (slice(r0 - br.start, r1 - br.start), slice(c0 - bc.start, c1 - bc.start))
                buf[(slice(None), *dst)] = out[:, r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start]
                filled[dst] = True
                if filled.all():
                    self._flush(key)

    def _flush(self, key: tuple[int, int]) -> None:
        buf, _ = self._pending.pop(key)
        self.ds.write(buf, window=_window(self._block_slices(*key)))
        self.blocks_written += 1

    @property
    def pending_blocks(self) -> int:
        """Blocks started but not complete (held in memory)."""
        return len(self._pending)

    def close(self, flush: bool = True) -> None:
        """Write incomplete blocks (their unwritten pixels as nodata, or 0 without one) and close."""
        try:
            if flush:
                fill = self.meta.nodata if self.meta.nodata is not None else 0
                for key in list(self._pending):
                    buf, filled = self._pending[key]
                    buf[:, ~filled] = np.dtype(self.meta.dtype).type(fill)
                    self._flush(key)
        finally:
            self._pending.clear()
            self.ds.close()


def crop_raster(src: str | Path, dst: str | Path, window: Slices, bands: Sequence[int] | None = None, overwrite: bool = False) -> Path:
    """Copy a window of ``src`` (``(rows, cols)`` slices) to a GeoTIFF with the shifted transform."""
    from rasterio.windows import transform as window_transform

    from domains.files import write_atomic

    dst = Path(dst)
    with RasterReader(src, bands) as r:
        rows, cols = r._check(window)
        meta = r.meta.resized(rows.stop - rows.start, cols.stop - cols.start, window_transform(_window(window), r.meta.transform))

        def write(tmp: Path) -> None:
            with RasterWriter(tmp, meta) as w:
                for sl in block_windows(meta.shape, BLOCK):
                    src_sl = (slice(rows.start + sl[0].start, rows.start + sl[0].stop), slice(cols.start + sl[1].start, cols.start + sl[1].stop))
                    data, valid = r.read(src_sl)
                    w.write(sl, data, valid if meta.marks_missing else None)

        write_atomic(dst, write, overwrite=overwrite)
    return dst


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
