"""Writing a dataset folder all at once: nothing half-written is ever left at the output path."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_folder", "file_sha256"]


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_folder(out: str, datalist: dict | None = None) -> Iterator[str]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` (after writing
    ``datalist`` to its ``datalist.json`` if given), on any error it is removed and ``out`` is untouched.

    Args:
        out: the final folder.
        datalist: a dict filled in by the caller inside the block, written last.
    """
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}-", dir=parent)
    try:
        yield tmp
        if datalist is not None:
            with open(os.path.join(tmp, "datalist.json"), "w") as f:
                json.dump(datalist, f, indent=1)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
