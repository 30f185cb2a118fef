"""Checks of run-level settings, made once up front with one message naming the setting and the fix.

Scripts call them on their arguments and every bundle calls ``check_run_settings`` in ``initialize``, so a
bad value (``--epochs 0``, ``--image_size 100``, ``--labels -1``) stops before any work starts instead of
surfacing later as a deep traceback or as silently different behaviour.
"""

from __future__ import annotations

from common.errors import TskdError

__all__ = ["SettingError", "as_flag", "check_image_size", "check_positive", "check_labels", "check_writable", "check_run_settings",
           "PATCH", "LITEMEDSAM_MULTIPLE"]

# The student's ViT-Tiny and SAM's encoder cut the image into 16-pixel patches.
PATCH = 16


class SettingError(TskdError):
    """A run setting has a value that cannot work."""


def as_flag(value, name: str = "flag") -> bool:
    """A yes/no setting: a bool, or the string a command line gives (``--resume false`` arrives as "false")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise SettingError(f"{name} must be true or false, got {value!r}.")


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise SettingError(f"{name} must be a whole number, got {value!r}.")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SettingError(f"{name} must be a whole number, got {value!r}.") from None
    if number != float(value):
        raise SettingError(f"{name} must be a whole number, got {value!r}.")
    return number


# What each network needs of the input side, and why.
LITEMEDSAM_MULTIPLE = (32, "LiteMedSAM's TinyViT encoder downsamples by 32")


def check_image_size(value, name: str = "image_size", multiple: int = PATCH,
                     why: str = "the ViT patch size") -> int:
    """A positive multiple of ``multiple`` (default 16, the patch size; ``why`` says whose rule it is), else one
    ``SettingError``."""
    size = _as_int(name, value)
    if size <= 0 or size % multiple:
        lower = max(multiple, size // multiple * multiple)
        raise SettingError(f"{name} must be a positive multiple of {multiple} ({why}), got {value!r}; "
                           f"use e.g. {lower} or {lower + multiple}.")
    return size


def check_positive(name: str, value) -> int:
    """A whole number >= 1, else one ``SettingError``."""
    number = _as_int(name, value)
    if number < 1:
        raise SettingError(f"{name} must be at least 1, got {value!r}.")
    return number


def check_labels(value, name: str = "labels") -> int:
    """0 (all labelled images) or a positive budget, else one ``SettingError``."""
    number = _as_int(name, value)
    if number < 0:
        raise SettingError(f"{name} must be 0 (all labelled training images) or a positive budget, got {value!r}.")
    return number


def check_writable(folder: str, name: str = "bundle_root") -> str:
    """Create ``folder`` if needed and check a file can be written in it, else one ``SettingError``."""
    from common.provenance import check_writable as writable

    writable(folder, f"--{name}", SettingError, what=name)
    return folder


def check_run_settings(epochs=1, batch_size=1, image_size=PATCH, labels=0, output: str | None = None) -> bool:
    """Check a bundle's tunables and, if given, that its output folder is writable (called from each
    bundle's ``initialize``); returns True."""
    check_positive("epochs", epochs)
    check_positive("batch_size", batch_size)
    check_image_size(image_size)
    check_labels(labels)
    if output is not None:
        check_writable(output)
    return True
