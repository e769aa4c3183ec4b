"""Reading images and writing results (kept for existing callers; see :mod:`pkl_dg.io`)."""

from pkl_dg.io import read_image, read_metadata, write_result

__all__ = ["read_image", "read_metadata", "write_result"]
