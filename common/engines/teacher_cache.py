"""One teacher pass over the transfer set, reused by every distillation epoch.

Task-specific KD is costly because the SAM teacher runs again in every epoch (the paper: 16.2
GPU-hours for TS-KD against 2.5 for MAE on the same data). The teacher is frozen and the transfer-set
views are fixed, so its outputs are too: this cache stores the low-resolution logits and last hidden
state of each image once, in fp16 ``.npy`` files read through memory maps (not held in RAM).

The manifest records a key made of the teacher's weights and of the teacher's *inputs*: a digest of each
transfer-set image after the preprocessing (so the file contents, the intensity normalisation, the
channel handling and the input size are all in it). A cache whose key differs is stale: it is rebuilt
(``on_stale="rebuild"``, logged) or refused with an error (``on_stale="error"``); it is never reused
silently.

Augmentation: the views must be fixed to be cached, so the cache serves deterministic preprocessing of
a transfer set whose augmentation is written to disk (``common.data.make_transfer_set``). With random
augmentation during KD the pretrain bundle switches to the online teacher (``kd_augment: true``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm import tqdm

from common.engines.distill_trainer import TEACHER_HIDDEN, TEACHER_LOGITS
from common.engines.distributed import barrier, is_rank0
from common.errors import TskdError
from common.provenance import file_sha256 as file_digest
from common.provenance import FolderLock, hidden_lock, module_digest, write_json

__all__ = ["TeacherCache", "CachedTeacherDataset", "kd_dataset"]

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class TeacherCache:
    """Teacher outputs for a list of images, built on first use and checked on every use.

    Args:
        cache_dir: folder of the cache (``logits.npy``, ``hidden.npy``, ``manifest.json``).
        teacher: the frozen teacher (``SamTeacher``).
        data: MONAI data dicts with an ``image`` path.
        transform: the deterministic preprocessing the KD dataset applies (same views as training).
        image_size: input size (part of the key).
        batch_size: images per teacher forward while building.
        on_stale: ``rebuild`` or ``error`` when the existing cache was made for other inputs.
        device: where the teacher runs while building.
    """

    def __init__(self, cache_dir: str, teacher: nn.Module, data: Sequence[dict], transform: Callable,
                 image_size: int, batch_size: int = 8, on_stale: str = "rebuild",
                 device: str | torch.device = "cpu") -> None:
        if on_stale not in ("rebuild", "error"):
            raise ValueError(f"on_stale must be 'rebuild' or 'error', got '{on_stale}'")
        self.cache_dir, self.data, self.transform = cache_dir, list(data), transform
        self.teacher_digest = module_digest(teacher)
        self.files = [d["image"] for d in self.data]
        self.key = self._key(image_size)
        if not is_rank0():  # under torchrun rank 0 alone checks and builds; the others wait, then check
            barrier()
            if self.manifest().get("key") != self.key:
                raise TskdError(f"rank 0 did not leave a teacher cache for these inputs in '{cache_dir}' "
                                f"({self._why_stale()}); see rank 0's log.")
            return
        try:
            # One builder at a time: two runs distilling into the same folder never interleave writes.
            with FolderLock(cache_dir, wait=True, what="the teacher cache", lock_file=hidden_lock(cache_dir)):
                self._check_or_build(teacher, image_size, batch_size, on_stale, device)
        finally:
            barrier()

    def _check_or_build(self, teacher: nn.Module, image_size: int, batch_size: int, on_stale: str,
                        device: str | torch.device) -> None:
        cache_dir = self.cache_dir
        if self.manifest().get("key") == self.key:
            logger.info(f"teacher cache up to date: {cache_dir} ({len(self.files)} images)")
        elif os.path.isfile(os.path.join(cache_dir, MANIFEST)) and on_stale == "error":
            raise TskdError(f"the teacher cache in '{cache_dir}' was built for another teacher, other images or "
                            f"other preprocessing ({self._why_stale()}). Delete the folder or set on_stale to 'rebuild'.")
        else:
            if os.path.isfile(os.path.join(cache_dir, MANIFEST)):
                logger.warning(f"teacher cache in {cache_dir} is stale ({self._why_stale()}); rebuilding")
            self._build(teacher, image_size, batch_size, torch.device(device))

    def _key(self, image_size: int) -> str:
        self.file_digests = [file_digest(f) for f in self.files]
        self.input_digest = self._input_digest()
        payload = {"teacher": self.teacher_digest, "files": self.file_digests, "inputs": self.input_digest,
                   "image_size": image_size}
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def _input_digest(self) -> str:
        """sha256 of every preprocessed image the teacher sees (values, shape, dtype)."""
        h = hashlib.sha256()
        for d in self.data:
            image = torch.as_tensor(self.transform(d)["image"]).detach().cpu().contiguous()
            h.update(f"{tuple(image.shape)}{image.dtype}".encode())
            h.update(image.numpy().tobytes())
        return h.hexdigest()

    def manifest(self) -> dict:
        path = os.path.join(self.cache_dir, MANIFEST)
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def _why_stale(self) -> str:
        old = self.manifest()
        reasons = []
        if old.get("teacher") != self.teacher_digest:
            reasons.append("teacher weights differ")
        if old.get("file_digests") != self.file_digests:
            reasons.append("transfer-set images differ")
        elif old.get("input_digest") != self.input_digest:
            reasons.append("the preprocessing (normalisation, channels or size) differs")
        return ", ".join(reasons) or "input size differs"

    def _build(self, teacher: nn.Module, image_size: int, batch_size: int, device: torch.device) -> None:
        tmp = self.cache_dir.rstrip("/") + ".building"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        teacher = teacher.to(device).eval()
        logits_mm = hidden_mm = None
        with torch.no_grad():
            for start in tqdm(range(0, len(self.data), batch_size), desc="teacher cache", unit="batch"):
                items = [self.transform(d) for d in self.data[start:start + batch_size]]
                images = torch.stack([torch.as_tensor(i["image"]) for i in items]).to(device)
                out = teacher.forward_all(images)
                logits, hidden = out["low_res_logits"].cpu().half().numpy(), out["hidden"].cpu().half().numpy()
                if logits_mm is None:
                    n = len(self.data)
                    logits_mm = np.lib.format.open_memmap(os.path.join(tmp, "logits.npy"), "w+", np.float16,
                                                          (n, *logits.shape[1:]))
                    hidden_mm = np.lib.format.open_memmap(os.path.join(tmp, "hidden.npy"), "w+", np.float16,
                                                          (n, *hidden.shape[1:]))
                logits_mm[start:start + len(items)] = logits
                hidden_mm[start:start + len(items)] = hidden
        logits_mm.flush()
        hidden_mm.flush()
        manifest = {"key": self.key, "teacher": self.teacher_digest, "files": self.files,
                    "file_digests": self.file_digests, "input_digest": self.input_digest, "image_size": image_size,
                    "dtype": "float16",
                    "logits_shape": list(logits_mm.shape), "hidden_shape": list(hidden_mm.shape)}
        del logits_mm, hidden_mm
        write_json(os.path.join(tmp, MANIFEST), manifest)
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        os.replace(tmp, self.cache_dir)  # the manifest appears only with complete arrays
        logger.info(f"teacher cache written: {self.cache_dir} ({len(self.files)} images)")


class CachedTeacherDataset(Dataset):
    """Transfer-set images with their cached teacher outputs (``teacher_logits``, ``teacher_hidden``).

    Args:
        cache: a built ``TeacherCache``.
    """

    def __init__(self, cache: TeacherCache) -> None:
        self.cache = cache
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None  # opened lazily, once per worker

    def __len__(self) -> int:
        return len(self.cache.data)

    def __getitem__(self, index: int) -> dict:
        if self._arrays is None:
            folder = self.cache.cache_dir
            self._arrays = (np.load(os.path.join(folder, "logits.npy"), mmap_mode="r"),
                            np.load(os.path.join(folder, "hidden.npy"), mmap_mode="r"))
        item = dict(self.cache.transform(self.cache.data[index]))
        item[TEACHER_LOGITS] = torch.from_numpy(np.array(self._arrays[0][index]))
        item[TEACHER_HIDDEN] = torch.from_numpy(np.array(self._arrays[1][index]))
        return item


def kd_dataset(data: Sequence[dict], transform: Callable, cache: TeacherCache | None = None) -> Dataset:
    """The KD training set: cached teacher outputs when ``cache`` is given, else images only (online teacher)."""
    if cache is not None:
        return CachedTeacherDataset(cache)
    from monai.data import Dataset as MonaiDataset

    return MonaiDataset(data=list(data), transform=transform)
