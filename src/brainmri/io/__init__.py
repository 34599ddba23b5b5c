"""Image I/O: one reader for every stage (see :mod:`brainmri.io.reader`)."""

from brainmri.io.reader import (
    EXTENSION_FORMATS,
    LoadedImage,
    extension_of,
    read_image,
    sniff_format,
)

__all__ = ["EXTENSION_FORMATS", "LoadedImage", "extension_of", "read_image", "sniff_format"]
