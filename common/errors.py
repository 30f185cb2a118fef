"""One clear error for bad input, instead of a deep traceback.

Config-driven runs (``python -m monai.bundle run``) wrap every exception raised while a component is
instantiated, so a plain message about a missing file ends up at the bottom of a long chained
traceback that also prints the whole component config. ``TskdError`` marks an error as the user's to
fix; ``install_excepthook`` prints just that message (set ``TSKD_TRACEBACK=1`` for the full chain).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from types import TracebackType

__all__ = ["TskdError", "CheckpointError", "DataError", "install_excepthook", "first_line", "find_tskd_error",
           "is_write_failure", "disk_full_error"]

# DataLoader workers re-raise errors in the main process by message only, so the marker also lets the
# hook recognise an error whose class was lost on the way.
MARKER = "[tskd] "


class TskdError(RuntimeError):
    """An error the user can fix; its message names the offending file or setting and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(MARKER + message)

    @property
    def message(self) -> str:
        return str(self)[len(MARKER):]


class CheckpointError(TskdError):
    """A checkpoint is missing, unreadable or of the wrong shape."""


class DataError(TskdError):
    """A dataset, datalist, image or mask cannot be used as given."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, or its class name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


# What torch's checkpoint writer says when the disk fills up under it (it does not pass on ENOSPC).
_TORCH_WRITE_FAILED = ("unexpected pos", "iostream error", "PytorchStreamWriter failed writing")


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for want of space (ENOSPC, a quota, or torch's writer giving up)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _TORCH_WRITE_FAILED)


def disk_full_error(exc: BaseException, path: str = "") -> TskdError:
    """A failed write (``is_write_failure``) as one ``TskdError`` naming the file (when known), the space left on
    its disk and the fix."""
    path = path or getattr(exc, "filename", None) or ""
    folder = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free on that disk"
    except OSError:
        free = "its disk could not be read"
    target = f"'{path}'" if path else "a file"
    return TskdError(f"could not write {target} ({first_line(exc, 80)}; {free}): free some space, or write the run to "
                     f"another disk (--out, or the bundle's --bundle_root).")


def find_tskd_error(exc: BaseException | None) -> TskdError | None:
    """The ``TskdError`` an exception was raised from, however deeply chained (e.g. inside MONAI's "Failed to
    instantiate component" wrapper), or a new one carrying the message of an error whose class was lost on the
    way (a DataLoader worker's); None when the error is not ours."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TskdError):
            return exc
        if is_write_failure(exc):
            return disk_full_error(exc)
        text = str(exc)
        if MARKER in text:
            return TskdError(text.split(MARKER, 1)[1].strip() or type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return None


def _find_tskd_message(exc: BaseException | None) -> str | None:
    error = find_tskd_error(exc)
    return None if error is None else error.message or type(error).__name__


def install_excepthook() -> None:
    """Print uncaught ``TskdError``s (however deeply chained) as one line of advice, exit status 1."""
    previous = sys.excepthook
    if getattr(previous, "_tskd", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        message = None if os.environ.get("TSKD_TRACEBACK") else _find_tskd_message(exc)
        if message is None:
            previous(exc_type, exc, tb)
            return
        sys.stderr.write(f"\ntskd error: {message}\n(set TSKD_TRACEBACK=1 to see the full traceback)\n")

    hook._tskd = True  # type: ignore[attr-defined]
    sys.excepthook = hook
