"""Plain 2D photos: PNG, JPEG and TIFF, 8 or 16 bit, grey or colour."""

from domains.images.io import ImageFileError, read_image, write_image

__all__ = ["ImageFileError", "read_image", "write_image"]
