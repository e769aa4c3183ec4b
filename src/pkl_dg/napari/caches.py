"""Bounded caches of the dock widget: forward models and networks, least recently used out
by bytes (no Qt).

A user trying PSFs creates one forward model per (image shape, PSF); each holds its OTF and
Aᵀ1, about 10–60 MB from 1024² to 2048² and growing as the run fills its OTF cache. Rebuilding
one costs a single PSF FFT, so only a few are worth keeping: :class:`OperatorCache` keeps
at most :data:`OPERATOR_CAP_BYTES` (the entry just used always stays). Networks cost a disk
load and are few: :class:`ModelCache` keeps at most :data:`MODEL_CAP_BYTES`. Together at most
:data:`CACHE_CAP_BYTES`. Sizes are measured, not declared (tensors and arrays reachable from
the cached object), and re-measured on every access since an operator grows while it is used.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np

MB = 1 << 20
#: both caches together; fits next to a restoration on an 8 GB laptop
CACHE_CAP_BYTES = 512 * MB
OPERATOR_CAP_BYTES = 64 * MB
MODEL_CAP_BYTES = CACHE_CAP_BYTES - OPERATOR_CAP_BYTES


def nbytes_of(obj: Any) -> int:
    """Bytes of the tensors and arrays reachable from ``obj`` (each storage counted once)."""
    import torch

    seen: set[int] = set()  # ids of objects and arrays
    storages: set[int] = set()  # data pointers of tensor storages

    def walk(o: Any, depth: int) -> int:
        if torch.is_tensor(o):
            storage = o.untyped_storage()
            key = storage.data_ptr()
            if key in storages or storage.device.type == "meta":
                return 0
            storages.add(key)
            return storage.nbytes()
        if isinstance(o, np.ndarray):
            if id(o) in seen:
                return 0
            seen.add(id(o))
            return o.nbytes
        if depth > 6 or id(o) in seen:
            return 0
        seen.add(id(o))
        if isinstance(o, torch.nn.Module):
            return sum(walk(t, depth + 1) for t in (*o.parameters(), *o.buffers()))
        if isinstance(o, dict):
            return sum(walk(v, depth + 1) for v in o.values())
        if isinstance(o, (list, tuple, set, frozenset)):
            return sum(walk(v, depth + 1) for v in o)
        if hasattr(o, "__dict__") and not isinstance(o, type):
            return sum(walk(v, depth + 1) for v in vars(o).values())
        return 0

    return walk(obj, 0)


class ByteLRU:
    """A thread-safe least-recently-used cache bounded by the measured bytes of its values.

    ``size_of(value)`` measures an entry (default :func:`nbytes_of`). After every
    :meth:`get` (and on :meth:`trim`) the least recently used entries go until the total is
    at most ``cap_bytes``; the most recently used entry always stays, even when it alone is
    larger than the cap (it is in use).
    """

    def __init__(self, cap_bytes: int, size_of: Callable[[Any], int] = nbytes_of) -> None:
        if cap_bytes < 0:
            raise ValueError(f"cache cap must be ≥ 0 bytes, got {cap_bytes}")
        self.cap_bytes = cap_bytes
        self._size_of = size_of
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.evicted = 0

    def get(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        """The value for ``key``, made by ``factory()`` on a miss; then trim."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                value = self._data[key]
            else:
                value = factory()
                self._data[key] = value
            self.trim()
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self.trim()

    def peek(self, key: Hashable) -> Any:
        """The value for ``key`` or None, without changing the order."""
        with self._lock:
            return self._data.get(key)

    def trim(self) -> int:
        """Re-measure and evict down to the cap; return the bytes now held."""
        with self._lock:
            sizes = {k: self._size_of(v) for k, v in self._data.items()}
            total = sum(sizes.values())
            for key in list(self._data)[:-1]:  # oldest first, never the newest
                if total <= self.cap_bytes:
                    break
                del self._data[key]
                total -= sizes[key]
                self.evicted += 1
            return total

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key satisfies ``predicate``; return how many."""
        with self._lock:
            gone = [k for k in self._data if predicate(k)]
            for k in gone:
                del self._data[k]
            return len(gone)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(self._size_of(v) for v in self._data.values())

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._data)

    def values(self) -> list[Any]:
        with self._lock:
            return list(self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def psf_key(psf: np.ndarray) -> tuple:
    """Content key of a PSF array (cheap: PSFs are small)."""
    arr = np.ascontiguousarray(psf, dtype=np.float32)
    return (arr.shape, hashlib.sha1(arr.tobytes()).hexdigest())


class OperatorCache(ByteLRU):
    """Forward models keyed on (image shape, PSF content), at most ``cap_bytes``.

    ``factory(psf)`` builds an operator, by default ``pkl_dg.physics.PSFConvolution(psf)``
    (which keeps its own OTF cache per padded shape, dtype and device). ``created`` counts
    operators built.
    """

    def __init__(self, factory: Callable[[np.ndarray], Any] | None = None,
                 cap_bytes: int = OPERATOR_CAP_BYTES) -> None:
        super().__init__(cap_bytes)
        self._factory = factory or _default_operator
        self.created = 0

    def get(self, image_shape: tuple[int, ...], psf: np.ndarray) -> Any:  # type: ignore[override]
        def make() -> Any:
            self.created += 1
            return self._factory(psf)
        return super().get((tuple(image_shape), psf_key(psf)), make)

    def operators(self) -> list[Any]:
        return self.values()

    def keep_shapes(self, shapes: set[tuple[int, ...]]) -> int:
        """Free the operators of image shapes not in ``shapes`` (their layers closed)."""
        return self.discard(lambda key: key[0] not in shapes)


def _default_operator(psf: np.ndarray) -> Any:
    from pkl_dg.physics import PSFConvolution

    return PSFConvolution(psf)


class ModelCache(ByteLRU):
    """Loaded networks keyed on (model path, device), at most ``cap_bytes``; ``loads``
    counts actual loads. A changed model file is reloaded.

    Tests (or callers with a network in hand) can :meth:`put` a denoiser under a key.
    """

    def __init__(self, loader: Callable[[str, str], Any] | None = None,
                 cap_bytes: int = MODEL_CAP_BYTES) -> None:
        super().__init__(cap_bytes, size_of=lambda entry: nbytes_of(entry[0]))
        self._loader = loader or _default_loader
        self.loads = 0

    def put(self, model_path: str, device: str, denoiser: Any) -> None:  # type: ignore[override]
        super().put((model_path, device), (denoiser, _file_stamp(model_path)))

    def get(self, model_path: str, device: str) -> Any:  # type: ignore[override]
        """The network for (path, device), loaded once; reloaded if the file changed."""
        with self._lock:
            key = (model_path, device)
            stamp = _file_stamp(model_path)
            entry = self.peek(key)
            if entry is None or entry[1] != stamp:
                entry = (self._loader(model_path, device), stamp)
                self.loads += 1
            super().put(key, entry)
            return entry[0]


def _file_stamp(model_path: str) -> float | None:
    """Modification time of a model file (or directory), None for the shipped default."""
    try:
        return os.stat(model_path).st_mtime if model_path else None
    except OSError:
        return None  # missing: the loader reports it


def _default_loader(model_path: str, device: str) -> Any:
    from pkl_dg.devices import resolve_device
    from pkl_dg.diffusion.model_io import load_model

    module, _config = load_model(model_path or None, resolve_device(device))
    return module


def release_freed_memory() -> bool:
    """Hand memory freed by the last run back to the operating system.

    glibc keeps freed blocks of large temporaries in its heaps (one per thread), so without
    this the resident size of a long napari session grows with every run even though
    nothing is held. Calls ``malloc_trim(0)``; returns False where there is no glibc (other
    allocators return such memory themselves).
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "malloc_trim"):  # musl and other non-glibc C libraries
        return False
    libc.malloc_trim(0)
    return True
