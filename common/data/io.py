"""Writing a dataset folder all at once: nothing half-written is ever left at the output path."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_folder"]


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
