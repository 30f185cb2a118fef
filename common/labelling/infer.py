"""A tskd bundle as a MONAI Label inference task."""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import torch
from monailabel.tasks.infer.bundle import BundleInferTask

__all__ = ["TskdInfer", "FlipInferer", "OnnxRuntimeNetwork"]

logger = logging.getLogger(__name__)
# The exported network must give the torch network's output to this (the export tests' bound).
ONNX_TOLERANCE = 1e-4


class OnnxRuntimeNetwork(torch.nn.Module):
    """A torch network served through ONNX Runtime: exported for each input shape it is called with (the first
    call of a shape pays for the export and is answered by torch), each export checked against torch on that first
    input; a shape whose export fails or differs is served by torch, with one warning."""

    def __init__(self, network: torch.nn.Module, folder: str, threads: int | None = None) -> None:
        super().__init__()
        self.network, self.folder = network.eval(), folder
        self.threads = threads or torch.get_num_threads()
        self.sessions: dict[tuple[int, ...], object] = {}

    def _session(self, x: torch.Tensor, expected: torch.Tensor):
        from common.models import export_onnx, max_abs_diff, onnx_session

        name = "x".join(str(n) for n in x.shape)
        try:
            path = export_onnx(self.network, x, os.path.join(self.folder, f"model_{name}.onnx"))
            session = onnx_session(path, self.threads)
            difference = max_abs_diff(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), expected)
        except Exception as e:  # noqa: BLE001 - any exporter or runtime failure falls back to torch
            logger.warning(f"tskd: serving {name} inputs with torch (the ONNX export failed: {e})")
            return None
        if difference > ONNX_TOLERANCE:
            logger.warning(f"tskd: serving {name} inputs with torch (the ONNX export differs by {difference:.2e})")
            return None
        logger.info(f"tskd: serving {name} inputs with ONNX Runtime ({path}, max difference {difference:.1e})")
        return session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.sessions:
            expected = self.network(x)
            self.sessions[shape] = self._session(x.detach().cpu().contiguous(), expected)
            return expected
        session = self.sessions[shape]
        if session is None:
            return self.network(x)
        return torch.from_numpy(session.run(None, {"image": x.detach().cpu().contiguous().numpy()})[0])

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
    - ``runtime="onnx"``: serve the network through ONNX Runtime on the CPU (``OnnxRuntimeNetwork``), re-exported
      whenever the served weights change (a ``/train`` round's swap);
    - the transforms are built once, not on every request;
    - a request with ``"tta_flip": [dims]`` infers on the flipped image (test-time augmentation);
    - 2D results are written as NIfTI with the input image's own affine (spacing), which MONAI Label's
      writer drops for 2D images.
    """

    def __init__(self, path: str, conf: dict, overrides: dict | None = None, preload: bool = False,
                 runtime: str = "torch", **kwargs) -> None:
        self._overrides = dict(overrides or {})
        self._built: dict[str, object] = {}
        self._runtime = runtime
        self._onnx: dict[str, tuple[torch.nn.Module, OnnxRuntimeNetwork]] = {}
        super().__init__(path, {**conf, "preload": "true" if preload else "false"}, **kwargs)
        if preload:  # the first request then pays for nothing but its own image
            self.pre_transforms()
            self.post_transforms()
            self.inferer()

    def _load_bundle_config(self, path, config):
        parser = super()._load_bundle_config(path, config)
        parser.update(self._overrides)
        return parser

    def _get_network(self, device, data):
        network = super()._get_network(device, data)
        if self._runtime != "onnx" or network is None or not str(device).startswith("cpu"):
            return network
        served = self._onnx.get(device)
        if served is None or served[0] is not network:  # new weights: a new export
            folder = os.path.join(os.path.dirname(self.get_path()), "onnx")
            served = (network, OnnxRuntimeNetwork(network, folder))
            self._onnx[device] = served
        return served[1]

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
