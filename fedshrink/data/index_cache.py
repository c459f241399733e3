"""Split and partition indices kept on disk, so a fresh process need not import what computes them.

The stratified splits come from scikit-learn and the client partitions from flwr-datasets (on Hugging Face
``datasets``); importing those costs about 4 s of CPU in every process that loads client data, and in a
deployment every message starts a ClientApp process. The indices are pure functions of their inputs, so the
first process computes them and the others read them back.

An entry's key is a SHA-256 of everything the result depends on: the labels (and client ids), the settings,
the versions of the libraries that compute it, and the source of the fedshrink modules that call them, so a
change to any of these makes a new entry rather than reading a stale one. Entries are ``.npz`` files of int64
arrays read with ``allow_pickle=False``, written to a temporary file and renamed into place (concurrent
processes never see half an entry); one that cannot be read is computed again and rewritten.

Where: ``$FEDSHRINK_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedshrink``, else ``~/.cache/fedshrink``, under
``indices/``. ``FEDSHRINK_CACHE_DIR=off`` turns the cache off; so does a directory that cannot be written
(the indices are then computed in every process, as without a cache).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

OFF = "off"
# the libraries whose results are cached, and fedshrink's modules that call them
LIBRARIES = ("numpy", "scikit-learn", "flwr-datasets", "datasets")
SOURCES = ("federated.py", "partition.py", "index_cache.py")


def cache_dir() -> Path | None:
    """The directory entries go in, or None when the cache is off."""
    env = os.environ.get("FEDSHRINK_CACHE_DIR", "")
    if env.strip().lower() == OFF:
        return None
    if env:
        return Path(env).expanduser() / "indices"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedshrink" / "indices"


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    """The library versions and the calling modules' source: part of every key."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    here = Path(__file__).resolve().parent
    source = hashlib.sha256(b"".join((here / f).read_bytes() for f in SOURCES)).hexdigest()
    return json.dumps({"versions": versions, "source": source}, sort_keys=True)


def entry_key(kind: str, settings: Mapping[str, Any], arrays: Sequence[np.ndarray | None]) -> str:
    """The SHA-256 naming an entry: ``kind``, ``settings`` (JSON), the arrays' dtype, shape and bytes, and
    :func:`_environment`."""
    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, "settings": dict(settings)}, sort_keys=True).encode())
    h.update(_environment().encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read(path: Path) -> list[np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            count = int(z["count"])
            parts = [np.asarray(z[f"a{i}"]) for i in range(count)]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if any(p.dtype != np.int64 or p.ndim != 1 for p in parts):
        return None
    return parts


def _write(path: Path, parts: Sequence[np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    except OSError:
        return  # not writable: no cache
    try:
        with os.fdopen(fd, "wb") as fh:
            arrays: dict[str, Any] = {f"a{i}": p for i, p in enumerate(parts)}
            np.savez(fh, count=np.int64(len(parts)), **arrays)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def cached_indices(kind: str, settings: Mapping[str, Any], arrays: Sequence[np.ndarray | None],
                   compute: Callable[[], Sequence[np.ndarray]]) -> list[np.ndarray]:
    """``compute()`` (a list of 1-D integer index arrays), read from the cache when an entry for these inputs
    exists, else computed and stored."""
    where = cache_dir()
    if where is None:
        return [np.asarray(p, dtype=np.int64) for p in compute()]
    path = where / f"{kind}-{entry_key(kind, settings, arrays)}.npz"
    parts = _read(path) if path.is_file() else None
    if parts is None:
        parts = [np.asarray(p, dtype=np.int64) for p in compute()]
        _write(path, parts)
    return parts
