"""MRI volumes: NIfTI in and out with the geometry exact."""

from domains.mri.io import MRIFileError, VolumeMeta, read_volume, reduced_affine, scaled_affine, write_volume

__all__ = ["MRIFileError", "VolumeMeta", "read_volume", "reduced_affine", "scaled_affine", "write_volume"]
