"""Multispectral satellite rasters: GeoTIFF/COG I/O with exact georeferencing, sensor-model operator, data, metrics.

Checkpoints find the ``sensor_mtf`` operator through the ``diffsr.operators`` entry points, not by importing this package.
"""

from domains.satellite.io import RasterFileError, RasterMeta, RasterReader, RasterWriter, read_raster
from domains.satellite.operators import SensorMTFDownsample, sigma_from_mtf

__all__ = ["RasterFileError", "RasterMeta", "RasterReader", "RasterWriter", "SensorMTFDownsample", "read_raster", "sigma_from_mtf"]
