"""Transforms every stage shares: the one way images are loaded, the one affine augmentation, and checks
that stop bad samples with a clear error.

Loading and augmentation live here (not copied into each config or script) because two loading chains
for the same files drift apart: an RGB NIfTI loaded without ``channel_dim`` becomes (1, H, W, 3) and a
2D augmentation then runs in 3D, mixing colour into space.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import (CopyItemsd, EnsureChannelFirst, LoadImaged, MapTransform, RandAdjustContrastd,
                              RandAffined, RandFlipd, RandGaussianNoised, RandGaussianSmoothd, RandScaleCropd,
                              RandScaleIntensityd, RandScaleIntensityFixedMeand, RandSimulateLowResolutiond, Resized)

from common.errors import DataError

__all__ = ["LoadImage2Dd", "random_affine", "nnunet_augmentation", "contrastive_views", "ValidateSampled",
           "MaskOutsideROId"]


def _source(data: Mapping[Hashable, Any], key: str) -> str:
    value = data.get(key)
    meta = getattr(value, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "<in memory>"))


class LoadImage2Dd(LoadImaged):
    """``LoadImaged`` for our 2D files, returning channel-first arrays: the image (key ``image_key``) as
    ``in_channels`` x H x W (RGB files store H x W x 3), every other key (label, evaluation mask) as
    1 x H x W.

    It is a ``LoadImaged`` (MONAI Label finds and adapts it as one). A file whose shape does not fit
    ``in_channels`` (an RGB image for a grey task, a volume) is one ``DataError`` naming it.

    Args:
        keys: keys to load (e.g. ``["image", "label"]``).
        in_channels: channels of the image.
        image_key: the key holding the image.
        kwargs: as ``LoadImaged`` (``image_only`` defaults to True).
    """

    def __init__(self, keys: KeysCollection, in_channels: int = 1, image_key: str = "image", **kwargs) -> None:
        kwargs.setdefault("image_only", True)
        super().__init__(keys, **kwargs)
        self.in_channels = int(in_channels)
        self.image_key = image_key
        self._rgb = EnsureChannelFirst(channel_dim=-1)
        self._grey = EnsureChannelFirst(channel_dim="no_channel")

    def __call__(self, data: Mapping[Hashable, Any], reader=None) -> dict[Hashable, Any]:  # type: ignore[override]
        d = super().__call__(data, reader)
        for key in self.key_iterator(d):
            image = d[key]
            channels = self.in_channels if key == self.image_key else 1
            shape = tuple(image.shape)
            if len(shape) == 3 and shape[-1] == 1:
                image, shape = image[..., 0], shape[:2]
            if channels > 1 and not (len(shape) == 3 and shape[-1] == channels):
                raise DataError(f"'{_source(d, key)}' has shape {shape}; this task expects {channels}-channel "
                                f"images (H x W x {channels}). Set in_channels to match the data, or convert the "
                                "images with scripts/prepare_data.py.")
            if channels == 1 and len(shape) != 2:
                raise DataError(f"'{_source(d, key)}' has shape {shape}; expected a 2D single-channel "
                                f"{'image' if key == self.image_key else key} (H x W). Set in_channels=3 for RGB "
                                "images; volumes must be sliced into 2D images first.")
            d[key] = self._rgb(image) if channels > 1 else self._grey(image)
        return d


def _pairs(value: float, axes: int) -> list[tuple[float, float]]:
    return [(-float(value), float(value))] * axes


def random_affine(keys: KeysCollection, image_size: int, prob: float = 0.5, rotate: float = 0.26,
                  scale: float = 0.1, shear: float = 0.0, translate: float = 0.0,
                  mode: str | Sequence[str] = "bilinear", padding_mode: str = "zeros") -> RandAffined:
    """MONAI ``RandAffined`` for 2D images with every axis given its range explicitly.

    ``RandAffined`` reads a scalar ``scale_range`` / ``shear_range`` / ``translate_range`` as a range for
    the first axis only, and translation in pixels; here each range applies to both axes and translation
    is a fraction of the image side.

    Args:
        keys: keys to transform together (image and label).
        image_size: side of the (square) images, in pixels.
        prob: probability of applying it.
        rotate: rotation, uniform in [-rotate, rotate] radians.
        scale: scale factor 1 + uniform[-scale, scale], drawn per axis.
        shear: shear terms uniform in [-shear, shear], both terms.
        translate: shift uniform in [-translate, translate] x ``image_size`` pixels, per axis.
        mode: interpolation per key (e.g. ``["bilinear", "nearest"]``).
        padding_mode: what fills pixels moved in from outside.

    Returns:
        The transform.
    """
    return RandAffined(keys, prob=prob, rotate_range=[(-float(rotate), float(rotate))],
                       scale_range=_pairs(scale, 2), shear_range=_pairs(shear, 2),
                       translate_range=_pairs(translate * image_size, 2), mode=mode, padding_mode=padding_mode)


def nnunet_augmentation(keys: KeysCollection = ("image", "label"), image_key: str = "image",
                        noise_std: float = 0.1) -> list:
    """nnU-Net's 2D training augmentation (Isensee et al., Nature Methods 2021, supplementary note 4;
    ``nnUNetTrainer.get_training_transforms``) built from MONAI transforms, for images scaled to [0, 1].

    In nnU-Net's order, each with its probability per sample: rotation in [-180, 180] degrees (0.2) and scaling
    by 0.7-1.4 (0.2), Gaussian noise (0.1), Gaussian blur with sigma 0.5-1 (0.2), brightness x 0.75-1.25 (0.15),
    contrast x 0.75-1.25 around the mean, range kept (0.15), low-resolution simulation at 0.5-1 of the size
    (0.25), gamma 0.7-1.5 on the inverted image (0.1) and on the image (0.3), both keeping mean and spread, and
    mirroring along each axis (0.5). Departures: nnU-Net draws one scale for both axes, MONAI one per axis;
    nnU-Net's noise variance is up to 0.1 on z-scored images, here ``noise_std`` is the largest standard deviation
    on [0, 1] images (0.1, about a third of a brain slice's spread, as nnU-Net's is of a z-scored one).

    Args:
        keys: the image key and the keys moved with it (label, evaluation mask); labels are resampled nearest.
        image_key: the key whose intensities change.
        noise_std: largest standard deviation of the added noise.

    Returns:
        The transforms, in order.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    modes = ["bilinear" if k == image_key else "nearest" for k in keys]
    return [RandAffined(keys, prob=0.2, rotate_range=[(-torch.pi, torch.pi)], mode=modes, padding_mode="zeros",
                        allow_missing_keys=True),
            RandAffined(keys, prob=0.2, scale_range=[(-0.3, 0.4)] * 2, mode=modes, padding_mode="zeros",
                        allow_missing_keys=True),
            RandGaussianNoised(image_key, prob=0.1, std=noise_std),
            RandGaussianSmoothd(image_key, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=0.2),
            RandScaleIntensityd(image_key, factors=0.25, prob=0.15),
            RandScaleIntensityFixedMeand(image_key, factors=0.25, preserve_range=True, prob=0.15),
            RandSimulateLowResolutiond(image_key, prob=0.25, zoom_range=(0.5, 1.0), upsample_mode="bicubic"),
            RandAdjustContrastd(image_key, prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
            RandAdjustContrastd(image_key, prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
            RandFlipd(keys, prob=0.5, spatial_axis=0, allow_missing_keys=True),
            RandFlipd(keys, prob=0.5, spatial_axis=1, allow_missing_keys=True)]


def contrastive_views(key: str, second_key: str, image_size: int, min_crop: float = 0.3) -> list:
    """Two independently augmented views of one image for MoCo v3 (Chen et al., ICCV 2021, section 4, which
    takes BYOL's augmentation): a random resized crop, a horizontal flip, brightness and contrast changes, and
    a Gaussian blur that is always applied to the first view and rarely to the second. Colour jitter becomes
    an intensity change (medical images are mostly grey); BYOL's solarisation is left out.

    Args:
        key: the image key; it holds the first view.
        second_key: the key the second view is written to.
        image_size: side of the (square) views, in pixels.
        min_crop: smallest crop side as a fraction of the image side, drawn per axis (0.3: about MoCo v3's 8 %
            of the area at the smallest).

    Returns:
        The transforms, in order (a copy of the image, then each view's chain).
    """
    transforms: list = [CopyItemsd(keys=key, names=second_key)]
    for k, blur in ((key, 1.0), (second_key, 0.1)):
        transforms += [RandScaleCropd(k, roi_scale=min_crop, max_roi_scale=1.0, random_size=True),
                       Resized(k, spatial_size=(image_size, image_size), mode="bilinear"),
                       RandFlipd(k, prob=0.5, spatial_axis=1),
                       RandScaleIntensityd(k, factors=0.4, prob=0.8),
                       RandAdjustContrastd(k, prob=0.8, gamma=(0.6, 1.6)),
                       RandGaussianSmoothd(k, sigma_x=(0.1, 2.0), sigma_y=(0.1, 2.0), prob=blur)]
    return transforms


class ValidateSampled(MapTransform):
    """Check one loaded image/label pair: finite image values, same spatial size, label values in
    ``0..num_classes-1``.

    Put it right after loading (before any resizing), so the error names the files.

    Args:
        keys: the image key and the label key, in that order; the image key alone checks images only.
        num_classes: number of classes including background.
    """

    def __init__(self, keys: Sequence[str] = ("image", "label"), num_classes: int = 2) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.label_key = (list(keys) + [None])[:2]
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image, label = d.get(self.image_key), d.get(self.label_key) if self.label_key else None
        if image is not None and not torch.isfinite(torch.as_tensor(image)).all():
            raise DataError(f"image '{_source(d, self.image_key)}' contains NaN or infinite values. Fix or remove the "
                            "file (scripts/prepare_data.py checks every image before writing a dataset).")
        if label is None:
            return d
        if image is not None and tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise DataError(f"image '{_source(d, self.image_key)}' is {tuple(image.shape[1:])} but its mask "
                            f"'{_source(d, self.label_key)}' is {tuple(label.shape[1:])}; masks must match their "
                            "image pixel for pixel. Re-export the mask at the image's size.")
        values = torch.unique(torch.as_tensor(label))
        bad = [int(v) if v == v.round() else float(v) for v in values
               if v != v.round() or v < 0 or v >= self.num_classes]
        if bad:
            raise DataError(f"mask '{_source(d, self.label_key)}' holds label values {bad[:10]} outside "
                            f"0..{self.num_classes - 1} (num_classes={self.num_classes}). Map the values to class "
                            "indices when preparing the data, or set num_classes.")
        return d


class MaskOutsideROId(MapTransform):
    """Make pixels outside an evaluation mask count as correctly predicted background, so metrics are
    computed inside the region only (DRIVE: vessels inside the field of view).

    Args:
        keys: one-hot (C, H, W) tensors to mask, e.g. ``["pred", "label"]``.
        roi_key: the key of the (1, H, W) evaluation mask (non-zero inside). Items without it are unchanged.
    """

    def __init__(self, keys: KeysCollection, roi_key: str = "roi") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.roi_key = roi_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        roi = d.get(self.roi_key)
        if roi is None or isinstance(roi, str):
            return d
        outside = torch.as_tensor(roi)[:1] == 0
        for key in self.key_iterator(d):
            onehot = d[key].clone()
            outside_k = outside.to(onehot.device)
            onehot[1:] = torch.where(outside_k, torch.zeros_like(onehot[1:]), onehot[1:])
            onehot[:1] = torch.where(outside_k, torch.ones_like(onehot[:1]), onehot[:1])
            d[key] = onehot
        return d
