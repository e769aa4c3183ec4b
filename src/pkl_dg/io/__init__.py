"""Microscopy file input/output: readers with axes and physical sizes, OME writers."""

from pkl_dg.io.read import AXES, MicroscopyImage, open_image, read_image
from pkl_dg.io.write import (read_metadata, write_ome_tiff, write_ome_zarr,
                             write_result)

__all__ = ["AXES", "MicroscopyImage", "open_image", "read_image", "read_metadata",
           "write_ome_tiff", "write_ome_zarr", "write_result"]
