"""Writing a dataset folder all at once: nothing half-written is ever left at the output path, and
nothing that this tool did not write is ever deleted. Reading back what an inference bundle wrote.

A folder written here carries a marker (``.tskd.json``) listing what it wrote. Replacing it later is
allowed only while it holds nothing else; an output folder that overlaps the source data, or that holds
anything this tool did not write, is refused with a message naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

from common.errors import DataError
from common.provenance import file_sha256

__all__ = ["atomic_folder", "file_sha256", "check_output_folder", "record_written", "image_stem", "read_prediction",
           "MARKER_FILE"]

MARKER_FILE = ".tskd.json"


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_output_folder(out: str, sources: Sequence[str] = (), nested_ok: bool = False) -> None:
    """Refuse an output folder that would destroy data: one that overlaps a source folder (equal to it,
    above it, or inside it unless ``nested_ok``), or an existing folder holding anything this tool did not
    write there.

    Args:
        out: the folder about to be (re)written.
        sources: folders that are read to write it.
        nested_ok: allow ``out`` inside a source (a transfer set kept in its dataset's folder).
    """
    real_out = os.path.realpath(out)
    for src in sources:
        real_src = os.path.realpath(src)
        if _inside(real_src, real_out) or (not nested_ok and _inside(real_out, real_src)):
            raise DataError(f"the output folder '{out}' overlaps the source '{src}': writing it would delete the source "
                            "data. Choose an output folder outside the source (e.g. data/<name>).")
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise DataError(f"the output '{out}' is a file, not a folder. Choose another output folder.")
    entries = set(os.listdir(out))
    if not entries:
        return
    marker = os.path.join(out, MARKER_FILE)
    written: set[str] = set()
    if os.path.isfile(marker):
        try:
            with open(marker) as f:
                written = set(json.load(f).get("entries", [])) | {MARKER_FILE}
        except (OSError, ValueError):
            written = set()
    if not written:
        raise DataError(f"the output folder '{out}' already exists and was not written by tskd (no {MARKER_FILE}); "
                        "it is left untouched. Choose a new output folder, or empty this one yourself.")
    unrelated = sorted(entries - written)
    if unrelated:
        raise DataError(f"the output folder '{out}' holds files tskd did not write ({', '.join(unrelated[:5])}"
                        f"{' …' if len(unrelated) > 5 else ''}); it is left untouched. Move them away or choose "
                        "another output folder.")


def record_written(folder: str, *names: str) -> None:
    """Add files written later into a folder of ours (e.g. a quality report beside a transfer set) to its
    marker, so that replacing the folder later is still allowed."""
    marker = os.path.join(folder, MARKER_FILE)
    if not os.path.isfile(marker):
        return
    with open(marker) as f:
        info = json.load(f)
    info["entries"] = sorted(set(info.get("entries", [])) | set(names))
    with open(marker, "w") as f:
        json.dump(info, f)


def _user_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def atomic_folder(out: str, datalist: dict | None = None, sources: Sequence[str] = (),
                  nested_ok: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` (after writing ``datalist``
    to its ``datalist.json`` if given), on any error it is removed and ``out`` is untouched.

    The old ``out`` is moved aside, the new one moved in, and only then the old one deleted; if moving in
    fails, the old one is put back.

    Args:
        out: the final folder (checked by ``check_output_folder`` first).
        datalist: a dict filled in by the caller inside the block, written last.
        sources: folders read to write ``out``, which it must not overlap.
        nested_ok: allow ``out`` inside a source folder.
    """
    check_output_folder(out, sources, nested_ok)
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}-", dir=parent)
    except OSError as e:
        raise DataError(f"cannot create the output folder '{out}' ({e.strerror or type(e).__name__}). "
                        "Choose a folder you can write to.") from e
    os.chmod(tmp, _user_mode())  # mkdtemp makes it 0700; the dataset gets the user's normal mode
    try:
        yield tmp
        if datalist is not None:
            with open(os.path.join(tmp, "datalist.json"), "w") as f:
                json.dump(datalist, f, indent=1)
        with open(os.path.join(tmp, MARKER_FILE), "w") as f:
            json.dump({"written_by": "tskd", "entries": sorted(os.listdir(tmp))}, f)
        old = None
        if os.path.isdir(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}-old-", dir=parent)
            os.rmdir(old)
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def image_stem(path: str) -> str:
    """An image's name without folder and extensions (``images/mni_z060.nii.gz`` -> ``mni_z060``): what the
    inference bundles name its prediction after, and the case name nnU-Net is given."""
    return os.path.basename(path).split(".")[0]


def read_prediction(folder: str, image: str):
    """The label map (squeezed numpy array) an inference bundle wrote into ``folder`` for ``image``: its
    ``SaveImaged`` names it ``<image stem>_seg.nii.gz``."""
    import nibabel as nib
    import numpy as np

    stem = image_stem(image)
    return np.squeeze(np.asarray(nib.load(os.path.join(folder, f"{stem}_seg.nii.gz")).dataobj))
