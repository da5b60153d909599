"""Small file helpers shared by every layer: atomic writes (temp file + rename), the cache folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half.

    The file gets ``mode`` (default: what ``open()`` would give, 0o666 minus the umask), not
    the 0o600 of the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], doc: Any) -> Path:
    return atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")


def cache_root() -> Path:
    """bastion's cache folder: ``$BASTION_CACHE_DIR``, else the user's cache directory."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("BASTION_CACHE_DIR") or user_cache_dir("bastion"))
