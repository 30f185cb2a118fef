"""Tiny fixture trees in each dataset's distribution layout (made by the tests, nothing downloaded).

Every foreground object sits in a known place so tests can check that pixel values land in the right
class: class k occupies rows [4k, 4k + 4) of the top-left quarter (see ``stripe``).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

H, W = 40, 48


def stripe(values: list[int], dtype=np.uint8) -> np.ndarray:
    """A mask with value values[k-1] on rows 4k..4k+3, columns 0..11 (k = 1..)."""
    m = np.zeros((H, W), dtype)
    for k, v in enumerate(values, start=1):
        m[4 * k:4 * k + 4, :12] = v
    return m


def rgb(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((H, W, 3)) * 255).astype(np.uint8)


def grey(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((H, W)) * 255).astype(np.uint8)


def save(path: str, array: np.ndarray, **kw) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def make_drive(root: str, n_train: int = 4, n_test: int = 2) -> str:
    """DRIVE's layout; the field of view covers all but the 4 right-most columns."""
    fov = np.full((H, W), 255, np.uint8)
    fov[:, -4:] = 0
    for split, numbers in (("training", range(21, 21 + n_train)), ("test", range(1, 1 + n_test))):
        for n in numbers:
            tag = f"{n:02d}_{split if split == 'test' else 'training'}"
            save(f"{root}/{split}/images/{tag}.tif", rgb(n))
            save(f"{root}/{split}/1st_manual/{n:02d}_manual1.gif", stripe([255]))
            save(f"{root}/{split}/mask/{tag}_mask.gif", fov)
    return root


def make_ph2(root: str, n: int = 6) -> str:
    for i in range(2, 2 + n):
        cid = f"IMD{i:03d}"
        base = f"{root}/PH2 Dataset images/{cid}"
        save(f"{base}/{cid}_Dermoscopic_Image/{cid}.bmp", rgb(i))
        save(f"{base}/{cid}_lesion/{cid}_lesion.bmp", stripe([255]))
    return root


def write_dicom(path: str, array: np.ndarray, instance: int, spacing: float = 1.5) -> str:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [spacing, spacing]
    ds.InstanceNumber = instance
    ds.SliceThickness = 6.0
    ds.PixelData = array.astype(np.uint16).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, write_like_original=False)
    return path


def make_chaos(root: str) -> str:
    for pid in ("1", "2", "3"):
        base = f"{root}/Train_Sets/MR/{pid}/T2SPIR"
        for k in range(1, 4):
            # File names run against the instance order, so pairing by name would be wrong.
            write_dicom(f"{base}/DICOM_anon/IMG-{10 - k:04d}.dcm", np.full((H, W), 100 * k), instance=k)
            save(f"{base}/Ground/liver_GT_{k:03d}.png", stripe([63, 126, 189, 252][:k + 1]))
    return root


def make_kidneyus(root: str, n: int = 6) -> str:
    for i in range(n):
        name = f"{i}_IM-0001-00{i:02d}_anon.png"
        save(f"{root}/kidneyUS_images_14_june_2022/{name}", grey(i))
        save(f"{root}/labels/reviewed_masks_1/capsule/{name}", stripe([1, 1, 1, 1]))
        save(f"{root}/labels/reviewed_masks_1/regions/{name}", stripe([0, 1, 2, 3]))
    return root


def make_pairs(root: str, mask_dir: str = "masks", n: int = 6, values: list[int] = [255], ext: str = "jpg") -> str:
    for i in range(n):
        save(f"{root}/images/case{i:02d}.{ext}", rgb(i))
        save(f"{root}/{mask_dir}/case{i:02d}.png", stripe(values))
    return root
