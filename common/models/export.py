"""Deployable forms of a trained model: TorchScript (traced) and ONNX, each checked against PyTorch.

The student's encoder (timm's ``forward_intermediates``) is not scriptable, so TorchScript is made by
tracing, which is exact for a fixed input size: the export is for the bundle's ``image_size``.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn as nn

from common.errors import TskdError

__all__ = ["trace_model", "export_onnx", "onnx_session", "max_abs_diff", "count_gflop"]


def count_gflop(model: nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOP of ``model`` on ``x``, counted by ``torch.utils.flop_counter``.

    timm's ViT computes attention with fused ``scaled_dot_product_attention``, which the counter does not
    see on the CPU: at 512² that hides 9.7 of the student encoder's 20.7 GFLOP. The count is therefore
    taken with timm's explicit (matmul) attention, the same arithmetic, restored afterwards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    try:
        for m, _ in fused:
            m.fused_attn = False
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for m, value in fused:
            m.fused_attn = value
    return counter.get_total_flops() / 1e9


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def trace_model(model: nn.Module, example: torch.Tensor, path: str | None = None, optimize: bool = True) -> torch.jit.ScriptModule:
    """A traced and frozen (weights as constants) TorchScript copy of ``model``.

    Args:
        model: the model, in eval mode.
        example: an input of the deployed size, e.g. ``torch.rand(1, C, S, S)``.
        path: where to save it (``torch.jit.save``; the frozen trace, which loads anywhere), if given.
        optimize: return it passed through ``optimize_for_inference`` as well (CPU kernels prepacked for
            this machine; such a module runs here but cannot be saved, so ``path`` gets the frozen trace).
    """
    model = model.eval()
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
        if path:
            torch.jit.save(frozen, path)
        return torch.jit.optimize_for_inference(frozen) if optimize else frozen


def export_onnx(model: nn.Module, example: torch.Tensor, path: str, opset: int = 18) -> str:
    """Write ``model`` as ONNX (``torch.onnx.export``, dynamo exporter; needs onnx and onnxscript).

    Args:
        model: the model, in eval mode.
        example: an input of the deployed size.
        path: the ``.onnx`` file to write.
        opset: ONNX opset.
    """
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise TskdError(f"ONNX export needs the onnx and onnxscript packages ({', '.join(missing)} missing): "
                        "pip install -r requirements.txt")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model.eval(), (example,), path, input_names=["image"], output_names=["pred"],
                          opset_version=opset, dynamo=True, external_data=False)
    return path


def onnx_session(path: str, threads: int):
    """An ONNX Runtime CPU session of ``path`` using ``threads`` intra-op threads (one inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
