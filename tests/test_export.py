"""Every student, and the merged teacher, exported by `monai.bundle ckpt_export` (TorchScript, traced) and
`onnx_export` at the bundle's input size, each equal to PyTorch within 1e-4."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

STUDENTS = sorted(d for d in os.listdir(os.path.join(ROOT, "bundles")) if d.endswith("_student"))
TOLERANCE = 1e-4


def _overrides(bundle: str) -> dict:
    return {"image_size": 128, "in_channels": 1, "class_names": ["background", "lesion"]} if bundle.startswith("folder") else {}


def _parser(bundle: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "bundles", bundle, "configs", "inference.json"))
    parser.update(_overrides(bundle))
    return parser


def _export(kind: str, bundle: str, net_id: str, ckpt: str, out: str, shape: list[int], cli: bool = False):
    """``monai.bundle ckpt_export`` / ``onnx_export`` on the bundle's inference.json: through the command
    line when ``cli`` (as the README runs it), else the same function in this process (no import cost)."""
    configs = os.path.join(ROOT, "bundles", bundle, "configs")
    args = {"filepath": out, "ckpt_file": ckpt, "meta_file": os.path.join(configs, "metadata.json"),
            "config_file": os.path.join(configs, "inference.json"), "bundle_root": os.path.dirname(out),
            "use_trace": True, "input_shape": shape, **_overrides(bundle)}
    if cli:
        cmd = [sys.executable, "-m", "monai.bundle", kind, net_id]
        for key, value in args.items():
            cmd += [f"--{key}", str(value)]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    else:
        import monai.bundle

        getattr(monai.bundle, kind)(net_id=net_id, **args)
    assert os.path.isfile(out)


def _exports_match(reference: torch.nn.Module, x: torch.Tensor, ts: str, onnx: str) -> None:
    import onnxruntime

    with torch.no_grad():
        expected = reference.eval()(x)
        traced = torch.jit.load(ts)(x)
    assert traced.shape == expected.shape
    assert float((traced - expected).abs().max()) <= TOLERANCE
    session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert out.shape == tuple(expected.shape)
    assert float((torch.from_numpy(out) - expected).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("bundle", STUDENTS)
def test_student_exports_equal_pytorch(bundle, tmp_path):
    # The folder bundle reads its classes, size and channels from the user's datalist at run time: given here.
    parser = _parser(bundle)
    size, channels = parser.get_parsed_content("image_size"), parser.get_parsed_content("in_channels")
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    ckpt = str(tmp_path / "model.pt")
    torch.save(net.state_dict(), ckpt)
    shape = [1, channels, size, size]
    for kind, name in (("ckpt_export", "model.ts"), ("onnx_export", "model.onnx")):
        _export(kind, bundle, "network_def", ckpt, str(tmp_path / name), shape,
                cli=bundle == "demo_student" and kind == "ckpt_export")
    _exports_match(net, torch.rand(*shape), str(tmp_path / "model.ts"), str(tmp_path / "model.onnx"))


def test_merged_teacher_exports_equal_the_lora_teacher(tmp_path):
    """The teacher bundle's model_merged.pt (LoRA merged into qkv) loads into ``merged_def`` and exports;
    the exports compute what the LoRA teacher computes."""
    from common.models import build_teacher

    teacher = build_teacher("litemedsam", image_size=128, num_classes=3, lora_rank=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # a trained adapter: merging must change the weights
    ckpt = str(tmp_path / "model_merged.pt")
    torch.save(teacher.merged_state_dict(), ckpt)
    shape = [1, 1, 128, 128]
    for kind, name in (("ckpt_export", "model_merged.ts"), ("onnx_export", "model_merged.onnx")):
        _export(kind, "demo_teacher", "merged_def", ckpt, str(tmp_path / name), shape)
    _exports_match(teacher, torch.rand(*shape), str(tmp_path / "model_merged.ts"), str(tmp_path / "model_merged.onnx"))


def test_the_served_student_runs_in_onnx_runtime_and_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    """MONAI Label serves the student through ``OnnxRuntimeNetwork``: exported for each input shape on its first
    call (answered by torch), then ONNX Runtime's answer, equal to torch's within 1e-4; an export that differs
    from torch by more is never served."""
    import logging

    from common.labelling import infer
    from common.models import build_vit_fpn

    torch.manual_seed(0)
    net = build_vit_fpn(image_size=64, in_channels=1, num_classes=3).eval()
    served = infer.OnnxRuntimeNetwork(net, str(tmp_path / "onnx"))
    x, y = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad(), caplog.at_level(logging.INFO):
        assert torch.equal(served(x), net(x))  # the first call of a shape: torch's answer, while it exports
        assert served.sessions[(1, 1, 64, 64)] is not None and (tmp_path / "onnx" / "model_1x1x64x64.onnx").is_file()
        out = served(y)
        assert out.shape == (1, 3, 64, 64) and not torch.equal(out, net(y))  # ONNX Runtime's, not torch's
        assert float((out - net(y)).abs().max()) <= TOLERANCE
        monkeypatch.setattr(infer, "ONNX_TOLERANCE", -1.0)  # no export can be this close: torch serves
        z = torch.rand(2, 1, 64, 64)
        served(z)
        assert served.sessions[(2, 1, 64, 64)] is None and torch.equal(served(z), net(z))
    assert "serving 2x1x64x64 inputs with torch (the ONNX export differs" in caplog.text
