"""GeoTIFF I/O on the shipped rasters: metadata, windowed reads, band selection, the block writer, bad files, normalisation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from domains.files import write_atomic
from domains.satellite.io import (
    RasterFileError,
    RasterReader,
    RasterWriter,
    coarser_transform,
    crop_raster,
    finer_transform,
    read_raster,
    to_dtype,
)
from domains.satellite.normalize import raster_normalization, robust_band_normalization

DATA = Path(__file__).resolve().parents[1] / "data" / "satellite"
L8 = DATA / "landsat8_ms_30m_7band_128.tif"
L7 = DATA / "landsat7_rgb_byte_256.tif"
TENTH = DATA / "rasterio_rgb-byte-tenth.tif"


def test_metadata_of_the_landsat8_crop() -> None:
    with RasterReader(L8) as r:
        m = r.meta
    assert (m.count, m.height, m.width, m.dtype, m.nodata) == (7, 128, 128, "uint16", None)
    assert m.descriptions == ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
    assert m.crs.to_epsg() == 32616
    assert m.transform == Affine(30.0, 0.0, 461475.0, 0.0, -30.0, 3394545.0)
    assert m.bounds == pytest.approx((461475.0, 3394545.0 - 128 * 30, 461475.0 + 128 * 30, 3394545.0))


def test_windowed_read_and_band_selection() -> None:
    with rasterio.open(L8) as ds:
        ref = ds.read()
    with RasterReader(L8, bands=[2, 3, 4]) as r:
        assert r.meta.count == 3 and r.meta.descriptions == ("B2", "B3", "B4") and r.meta.bands == (2, 3, 4)
        data, valid = r.read((slice(10, 40), slice(5, 70)))
    assert data.dtype == np.float32 and data.shape == (3, 30, 65) and valid.all()
    np.testing.assert_array_equal(data, ref[1:4, 10:40, 5:70].astype(np.float32))


def test_nodata_mask_of_the_uint8_scene() -> None:
    data, valid, meta = read_raster(TENTH)
    assert meta.nodata == 0.0 and meta.dtype == "uint8"
    with rasterio.open(TENTH) as ds:
        expected = ds.dataset_mask() > 0
    np.testing.assert_array_equal(valid, expected)
    assert 0.2 < 1 - valid.mean() < 0.5
    assert (data[:, ~valid] == 0).all()


def test_bad_band_selection() -> None:
    with pytest.raises(RasterFileError, match=r"band\(s\) \[8\] do not exist; the raster has bands 1..7"):
        RasterReader(L8, bands=[1, 8])
    with pytest.raises(RasterFileError, match="selected twice"):
        RasterReader(L8, bands=[2, 2])


def test_transforms_scale_about_the_corner() -> None:
    t = Affine.rotation(20) @ Affine(30.0, 0.0, 1000.0, 0.0, -30.0, 5000.0)
    fine = finer_transform(t, (2, 4))
    assert fine @ (0, 0) == pytest.approx(t @ (0, 0))
    assert fine @ (8, 4) == pytest.approx(t @ (2, 2))
    assert coarser_transform(fine, (2, 4)).almost_equals(t)


def test_to_dtype_rounds_clips_and_keeps_valid_off_nodata() -> None:
    data = np.array([[[-3.0, 0.4, 1.6, 300.0]]], dtype=np.float32)
    valid = np.array([[True, True, True, False]])
    out = to_dtype(data, "uint8", nodata=0.0, valid=valid)
    np.testing.assert_array_equal(out, [[[1, 1, 2, 0]]])  # 0 is nodata: valid zeros become 1
    np.testing.assert_array_equal(to_dtype(np.array([[[70000.0, -5.0]]]), "uint16"), [[[65535, 0]]])
    np.testing.assert_array_equal(to_dtype(np.array([[[-40000.0, 12.5]]]), "int16"), [[[-32768, 12]]])
    f = to_dtype(np.array([[[0.25, -9999.0]]]), "float32", nodata=-9999.0, valid=np.array([[True, True]]))
    assert f[0, 0, 0] == np.float32(0.25) and f[0, 0, 1] != np.float32(-9999.0)


def test_writer_blocks_compression_and_metadata(tmp_path: Path) -> None:
    data, valid, meta = read_raster(L7)
    out_meta = meta.resized(300, 520, finer_transform(meta.transform, (1, 2)))  # not a multiple of the block
    rng = np.random.default_rng(0)
    full = rng.uniform(-20, 280, size=(3, 300, 520)).astype(np.float32)
    mask = np.ones((300, 520), dtype=bool)
    mask[:40, :70] = False
    target = tmp_path / "out.tif"

    def write(tmp: Path) -> None:
        with RasterWriter(tmp, out_meta) as w:
            # windows in a scattered order and odd shapes; each pixel once
            for rows, cols in [((100, 300), (0, 520)), ((0, 100), (300, 520)), ((0, 100), (0, 300))]:
                sl = (slice(*rows), slice(*cols))
                w.write(sl, full[(slice(None), *sl)], mask[sl])
            assert w.pending_blocks == 0 and w.blocks_written == 6

    write_atomic(target, write)
    with rasterio.open(target) as ds:
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        assert ds.compression.value == "DEFLATE" and ds.profile.get("predictor") in (2, "2", None)
        assert ds.crs == meta.crs and ds.transform == out_meta.transform and ds.nodata == 0.0
        arr = ds.read()
    expected = to_dtype(full, "uint8", 0.0, mask)
    np.testing.assert_array_equal(arr, expected)
    assert (arr[:, :40, :70] == 0).all() and (arr[:, mask] > 0).any(axis=0).all()


def test_writer_flushes_partial_blocks_as_nodata(tmp_path: Path) -> None:
    _, _, meta = read_raster(L7)
    target = tmp_path / "partial.tif"
    with RasterWriter(target, meta) as w:
        w.write((slice(0, 10), slice(0, 10)), np.full((3, 10, 10), 7.0))
        assert w.pending_blocks == 1
    with rasterio.open(target) as ds:
        arr = ds.read()
    assert (arr[:, :10, :10] == 7).all() and (arr[:, 10:, :] == 0).all()


def test_crop_raster_keeps_georeferencing(tmp_path: Path) -> None:
    out = crop_raster(L8, tmp_path / "crop.tif", (slice(32, 96), slice(16, 80)), bands=[4, 3, 2])
    with rasterio.open(L8) as a, rasterio.open(out) as b:
        assert b.transform == a.transform @ Affine.translation(16, 32)
        assert b.descriptions == ("B4", "B3", "B2") and b.crs == a.crs
        np.testing.assert_array_equal(b.read(), a.read([4, 3, 2], window=((32, 96), (16, 80))))
    with pytest.raises(FileExistsError):
        crop_raster(L8, out, (slice(0, 8), slice(0, 8)))


# --- bad files -----------------------------------------------------------------------------------------
def test_missing_and_non_raster_files(tmp_path: Path) -> None:
    with pytest.raises(RasterFileError, match="file not found"):
        RasterReader(tmp_path / "nope.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(RasterFileError, match="notes.tif: not a readable raster"):
        RasterReader(text)


def test_corrupt_file_fails_on_read_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "truncated.tif"
    raw = L7.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(RasterFileError, match="truncated.tif"):
        with RasterReader(bad) as r:
            r.check_has_data()
            r.read()


def test_no_crs_is_read_unless_required(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=1, dtype="uint16") as ds:
        ds.write(np.ones((1, 16, 16), dtype=np.uint16))
    with pytest.raises(RasterFileError, match="nocrs.tif: raster has no CRS"):
        RasterReader(path, require_crs=True)
    with RasterReader(path) as r:
        assert r.meta.crs is None and not r.meta.georeferenced


def test_all_nodata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    shutil.copy(L7, path)
    with rasterio.open(path, "r+") as ds:
        ds.write(np.zeros((3, 256, 256), dtype=np.uint8))
    with pytest.raises(RasterFileError, match="every pixel is nodata"):
        with RasterReader(path) as r:
            r.check_has_data(chunk=100)


def test_unsupported_dtype(tmp_path: Path) -> None:
    path = tmp_path / "f64.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="float64", crs="EPSG:4326",
                       transform=Affine(1, 0, 0, 0, -1, 0)) as ds:
        ds.write(np.zeros((1, 8, 8)))
    with pytest.raises(RasterFileError, match="data type float64 is not supported"):
        RasterReader(path)


# --- normalisation -----------------------------------------------------------------------------------------
def test_robust_band_normalization_excludes_nodata() -> None:
    data, valid, _ = read_raster(TENTH)
    norm = robust_band_normalization([(data, valid)], 1.0, 99.0)
    vals = data[:, valid]
    lo, hi = np.percentile(vals, [1, 99], axis=1)
    np.testing.assert_allclose(norm.offset, (lo + hi) / 2)
    np.testing.assert_allclose(norm.scale, (hi - lo) / 2)
    naive = robust_band_normalization([(data, None)], 1.0, 99.0)
    assert naive.offset[0] < norm.offset[0]  # the zeros of nodata would drag it down


def test_raster_normalization_streams_and_subsamples() -> None:
    full = raster_normalization(L8, bands=[2, 3, 4], chunk=50)
    data, valid, _ = read_raster(L8, bands=[2, 3, 4])
    exact = robust_band_normalization([(data, valid)])
    np.testing.assert_allclose(full.offset, exact.offset)
    sub = raster_normalization(L8, bands=[2, 3, 4], max_pixels=4000, seed=1)
    np.testing.assert_allclose(sub.offset, exact.offset, rtol=0.02)
    assert len(sub.scale) == 3


def test_constant_band_cannot_be_normalised() -> None:
    data = np.ones((2, 8, 8), dtype=np.float32)
    data[0] = np.arange(64).reshape(8, 8)
    with pytest.raises(ValueError, match=r"band\(s\) \[2\]"):
        robust_band_normalization([(data, None)])
    with pytest.raises(ValueError, match="no valid pixels"):
        robust_band_normalization([(data, np.zeros((8, 8), dtype=bool))])
