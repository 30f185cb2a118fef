"""A tskd bundle as a MONAI Label inference task."""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from monailabel.tasks.infer.bundle import BundleInferTask

__all__ = ["TskdInfer", "FlipInferer"]

class FlipInferer:
    """Runs ``inferer`` on the input flipped along ``dims`` and flips the output back (test-time augmentation)."""

    def __init__(self, inferer, dims: tuple[int, ...]) -> None:
        self.inferer, self.dims = inferer, dims

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        return torch.flip(self.inferer(torch.flip(inputs, self.dims), network, *args, **kwargs), self.dims)


class TskdInfer(BundleInferTask):
    """A tskd student or teacher bundle served by MONAI Label.

    - ``overrides`` (e.g. from ``run_overrides``) are applied to the bundle's ``inference.json`` before the network
      is built (``common.labelling.runs.run_overrides``), so a student trained with ``--fpn skip`` or at another
      size is served as it was trained;
    - ``preload``: load the network when the server starts (the student), instead of on the first request;
    - the transforms are built once, not on every request;
    - a request with ``"tta_flip": [dims]`` infers on the flipped image (test-time augmentation);
    - 2D results are written as NIfTI with the input image's own affine (spacing), which MONAI Label's
      writer drops for 2D images.
    """

    def __init__(self, path: str, conf: dict, overrides: dict | None = None, preload: bool = False, **kwargs) -> None:
        self._overrides = dict(overrides or {})
        self._built: dict[str, object] = {}
        super().__init__(path, {**conf, "preload": "true" if preload else "false"}, **kwargs)
        if preload:  # the first request then pays for nothing but its own image
            self.pre_transforms()
            self.post_transforms()
            self.inferer()

    def _load_bundle_config(self, path, config):
        parser = super()._load_bundle_config(path, config)
        parser.update(self._overrides)
        return parser

    def pre_transforms(self, data=None):
        if "pre" not in self._built:
            self._built["pre"] = super().pre_transforms(data)
        return self._built["pre"]

    def post_transforms(self, data=None):
        if "post" not in self._built:
            self._built["post"] = super().post_transforms(data)
        return self._built["post"]

    def inferer(self, data=None):
        if "inferer" not in self._built:
            self._built["inferer"] = super().inferer(data)
        dims = (data or {}).get("tta_flip")
        inferer = self._built["inferer"]
        # Spatial dims of the batched input (N, C, H, W): the request's -1 / -2 name width / height.
        return FlipInferer(inferer, tuple(int(d) for d in dims)) if dims else inferer

    def writer(self, data, extension=None, dtype=None):
        if self.dimension != 2:
            return super().writer(data, extension, dtype)
        import nibabel as nib

        pred = np.asarray(data[self.output_label_key].detach().cpu() if torch.is_tensor(data[self.output_label_key])
                          else data[self.output_label_key])
        pred = np.squeeze(pred).astype(np.uint8)
        affine, shape = np.eye(4), pred.shape
        path = data.get("image_path")
        if isinstance(path, str) and path.endswith((".nii", ".nii.gz")):
            image = nib.load(path)
            affine, shape = image.affine, image.shape
        out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        nib.save(nib.Nifti1Image(pred.reshape(shape), affine), out)
        return out, {"label_names": self.labels}
