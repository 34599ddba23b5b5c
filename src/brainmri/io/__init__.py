"""Image I/O: one reader for every stage (see :mod:`brainmri.io.reader`) and the uint8 quantiser."""

from brainmri.io.pixels import to_uint8
from brainmri.io.reader import (
    EXTENSION_FORMATS,
    LoadedImage,
    check_usable,
    extension_of,
    is_image_file,
    read_image,
    sniff_format,
)

__all__ = [
    "EXTENSION_FORMATS",
    "LoadedImage",
    "check_usable",
    "extension_of",
    "is_image_file",
    "read_image",
    "sniff_format",
    "to_uint8",
]
