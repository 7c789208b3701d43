"""Where bninfer's compiled Numba kernels are cached, and when a cached kernel is stale.

Numba stamps a cached function with the hash of its own source file only, but bninfer's kernels inline
the activation table and helpers from other files: after an upgrade that changed only those, Numba would
load stale machine code and answer silently wrong. bninfer's functions therefore get a locator whose
stamp is the hash of every source file the kernels are built from (and of vector_width.py, which
decides how wide they vectorize, and tiles.py, whose host table gives a kernel module a constant: the
one-row product's prefetch distance), and whose directory is bninfer's own
(BNINFER_CACHE_DIR, else the user cache dir), so a read-only install still caches.

The same directory keeps the object code of the trampolines a native plan calls its kernels through
(bninfer.kernels.calls), under the same stamp: `load_object` / `store_object`.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Callable

import numba
from numba.core import caching

PACKAGE = Path(__file__).resolve().parent
SOURCES = ["activations.py", "kernels", "vector_width.py", "tiles.py"]


@functools.lru_cache(maxsize=1)
def sources_hash() -> str:
    h = hashlib.sha256(numba.__version__.encode())
    for entry in SOURCES:
        path = PACKAGE / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(PACKAGE).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("BNINFER_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bninfer"


def object_path(name: str) -> Path:
    return cache_dir() / sources_hash() / "objects" / f"{name}.o"


def load_object(name: str) -> bytes | None:
    """The object code `store_object` kept under name, or None: absent, unreadable, or not the bytes
    that were stored (a torn or damaged file is built again, never handed to the linker)."""
    try:
        data = object_path(name).read_bytes()
    except OSError:
        return None
    digest, body = data[:32], data[32:]
    return body if body and hashlib.sha256(body).digest() == digest else None


def store_object(name: str, body: bytes) -> None:
    """Keep object code under name for later processes (best effort: a read-only cache stays empty).
    Written whole to a file of this process's own, then renamed over the name: a process reading it
    meanwhile sees the old file or the new one."""
    path = object_path(name)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(hashlib.sha256(body).digest() + body)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


class BninferCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        rel = Path(py_file).resolve().relative_to(PACKAGE)
        self._cache_path = str(cache_dir() / sources_hash() / rel.parent / rel.stem)

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return sources_hash()

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            Path(py_file).resolve().relative_to(PACKAGE)
        except (ValueError, OSError):
            return None  # not bninfer's: let Numba's own locators handle it
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


def install() -> None:
    locators = caching.CacheImpl._locator_classes
    if BninferCacheLocator not in locators:
        locators.insert(0, BninferCacheLocator)


install()


def named(factory: str, key) -> Callable:
    """Decorator for a function a factory makes (one per key): a qualified name of its own, from the
    factory and the key. Numba names compiled code after the qualified name and a per-process counter,
    and a cached function keeps the name it was compiled under: two closures of one factory compiled
    in different processes could load under one symbol, and a kernel would then call the other's
    code (a cached conv with Celu ran another code's activation span)."""
    parts = key if isinstance(key, tuple) else (key,)
    name = "_".join([factory] + [str(p) for p in parts])

    def deco(fn):
        fn.__name__ = fn.__qualname__ = name
        return fn
    return deco
