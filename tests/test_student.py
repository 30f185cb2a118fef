import pytest
import torch

from common.errors import CheckpointError
from common.models import build_vit_fpn, load_encoder_weights, model_size


@pytest.mark.parametrize("size,channels,fpn", [(256, 1, "light"), (512, 3, "light"), (96, 3, "skip")])
def test_student_shapes(size, channels, fpn):
    model = build_vit_fpn(image_size=size, in_channels=channels, num_classes=4, fpn=fpn).eval()
    with torch.no_grad():
        logits, hidden = model.forward_with_hidden(torch.rand(1, channels, size, size))
    assert logits.shape == (1, 4, size, size)
    assert hidden.shape == (1, 192, size // 16, size // 16)
    assert model.encoder.embed_dim == 192 and len(model.encoder.blocks) == 12
    assert model.encoder.patch_embed.patch_size == (16, 16)


def test_student_size_matches_the_paper():
    params, mb = model_size(build_vit_fpn(image_size=256, in_channels=3, num_classes=2, fpn="paper"))
    assert 7e6 < params < 10e6
    assert 28 < mb < 38  # the paper's student with head: 33 MB


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def test_the_default_pyramid_costs_less_than_the_encoder():
    from common.models import count_gflop

    x = torch.rand(1, 1, 256, 256)
    costs = {}
    for fpn in ("light", "paper"):
        model = build_vit_fpn(image_size=256, fpn=fpn).eval()
        encoder = count_gflop(_Encoder(model), x)
        costs[fpn] = (count_gflop(model, x) - encoder) / encoder
        assert model.encoder.blocks[0].attn.fused_attn  # counting left the fast attention on
    assert encoder > 3.3  # attention counted: 3.36 GFLOP at 256² (2.75 without it)
    assert costs["light"] <= 0.45  # measured 0.41: FPN + head well under the encoder
    assert costs["paper"] > 2.5  # measured 2.7: 256-channel dense 3x3 convolutions at stride 4
    with pytest.raises(ValueError, match="fpn must be one of"):
        build_vit_fpn(image_size=64, fpn="wide")


@pytest.mark.parametrize("fpn", ["light", "paper", "skip"])
def test_student_reaches_every_parameter(fpn):
    model = build_vit_fpn(image_size=64, in_channels=1, num_classes=3, fpn=fpn)
    model(torch.rand(2, 1, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_encoder_weights_load_across_sizes_and_bad_files_are_named(tmp_path):
    source = build_vit_fpn(image_size=128, in_channels=3, num_classes=2)
    path = tmp_path / "encoder.pt"
    torch.save({"model": {f"encoder.{k}": v for k, v in source.encoder.state_dict().items()}}, path)
    target = build_vit_fpn(image_size=256, in_channels=1, num_classes=3)
    loaded = load_encoder_weights(target, str(path))
    assert "blocks.0.attn.qkv.weight" in loaded and "pos_embed" in loaded
    torch.testing.assert_close(target.encoder.blocks[5].mlp.fc1.weight, source.encoder.blocks[5].mlp.fc1.weight)
    assert target.encoder.pos_embed.shape[1] == 1 + 16 * 16
    assert target.encoder.patch_embed.proj.weight.shape[1] == 1
    small = tmp_path / "small.pt"
    torch.save({"blocks.0.norm1.weight": torch.ones(7)}, small)
    with pytest.raises(CheckpointError, match=r"small.pt.*blocks.0.norm1.weight has shape \(7,\)"):
        load_encoder_weights(target, str(small))
    torch.save({"blocks.0.norm1.weight": torch.ones(192)}, small)
    with pytest.raises(CheckpointError, match="small.pt' lacks"):
        load_encoder_weights(target, str(small))


def test_the_skip_student_draws_at_full_resolution_under_a_fifth_of_the_reference():
    from common.models import build_dynunet, count_gflop

    # The light and paper students upsample a stride-4 map bilinearly: between its samples their logits are
    # linear, so about half of the second differences along a row vanish, and a line thinner than 4 px cannot
    # be drawn. The skip student's full-resolution decoder has no such constraint.
    torch.manual_seed(0)
    x = torch.rand(1, 1, 64, 64)
    for fpn, linear in (("light", True), ("paper", True), ("skip", False)):
        model = build_vit_fpn(image_size=64, num_classes=2, fpn=fpn).eval()
        with torch.no_grad():
            logits = model(x)[0, 1]
        second = logits[:, 2:] - 2 * logits[:, 1:-1] + logits[:, :-2]
        flat = float((second.abs() <= 1e-4 * logits.abs().max()).float().mean())
        assert (flat > 0.4) if linear else (flat < 0.01), (fpn, flat)
    size = 128
    x = torch.rand(1, 1, size, size)
    light = count_gflop(build_vit_fpn(image_size=size, fpn="light").eval(), x)
    skip = count_gflop(build_vit_fpn(image_size=size, fpn="skip").eval(), x)
    reference = count_gflop(build_dynunet(size, 1, 2).eval(), x)
    assert light < skip < 1.35 * light  # the stem and skip decoder: a third more at most (measured 1.21x)
    assert skip <= reference / 5


def test_a_distilled_skip_student_passes_its_stem_and_decoder_on(tmp_path):
    source = build_vit_fpn(image_size=64, num_classes=3, fpn="skip")
    path = tmp_path / "encoder.pt"
    torch.save(source.state_dict(), path)
    target = build_vit_fpn(image_size=64, num_classes=3, fpn="skip", encoder_checkpoint=str(path), init_head=True)
    loaded = load_encoder_weights(target, str(path), with_head=True)
    assert any(k.startswith("stem.") for k in loaded) and any(k.startswith("head.fuse") for k in loaded)
    torch.testing.assert_close(target.stem.stages[0][0].weight, source.stem.stages[0][0].weight)
    with pytest.raises(CheckpointError, match="FPN head does not fit"):
        build_vit_fpn(image_size=64, num_classes=2, fpn="skip", encoder_checkpoint=str(path), init_head=True)


@pytest.mark.parametrize("fpn", ["light", "skip"])
def test_student_exports_match_pytorch(tmp_path, fpn):
    import onnxruntime as ort

    from common.models import export_onnx, max_abs_diff, trace_model

    model = build_vit_fpn(image_size=64, in_channels=1, num_classes=3, fpn=fpn).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        reference = model(x)
    traced = trace_model(model, x, path=str(tmp_path / "student.ts"))
    loaded = torch.jit.load(str(tmp_path / "student.ts"))
    assert max_abs_diff(traced(x), reference) <= 1e-4 and max_abs_diff(loaded(x), reference) <= 1e-4
    path = export_onnx(model, x, str(tmp_path / "student.onnx"))
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert out.shape == (1, 3, 64, 64) and max_abs_diff(torch.from_numpy(out), reference) <= 1e-4


def test_twelve_head_weights_need_a_twelve_head_student(tmp_path):
    """MAE-lite's ImageNet ViT-Tiny has 12 heads: its weights fit a 3-head model's shapes exactly but compute
    another function. The count is read from the checkpoint when recorded, and must agree when given."""
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", img_size=64, in_chans=1, num_classes=0, num_heads=12).eval()
    x = torch.rand(2, 1, 64, 64)
    recorded, bare = tmp_path / "mae_lite.pth", tmp_path / "bare.pth"
    torch.save({"model": reference.state_dict(), "args": {"num_heads": 12}}, recorded)
    torch.save(reference.state_dict(), bare)
    student = build_vit_fpn(64, 1, 2, num_heads=None, encoder_checkpoint=str(recorded)).eval()
    with torch.no_grad():
        assert torch.allclose(student.encoder.forward_features(x), reference.forward_features(x), atol=1e-5)
        wrong = build_vit_fpn(64, 1, 2, num_heads=3, encoder_checkpoint=str(bare)).eval()
        assert not torch.allclose(wrong.encoder.forward_features(x), reference.forward_features(x), atol=1e-3)
    with pytest.raises(CheckpointError, match="records a ViT-Tiny with 12 attention heads, but num_heads is 3"):
        build_vit_fpn(64, 1, 2, num_heads=3, encoder_checkpoint=str(recorded))
    with pytest.raises(CheckpointError, match="does not record how many attention heads"):
        build_vit_fpn(64, 1, 2, num_heads=None, encoder_checkpoint=str(bare))
    assert build_vit_fpn(64, 1, 2, num_heads=12, encoder_checkpoint=str(bare)).encoder.blocks[0].attn.num_heads == 12


def test_amp_on_a_cpu_without_bf16_instructions_trains_in_fp32_and_says_so(monkeypatch, caplog):
    import common.engines.precision as precision
    from common.engines import autocast_network

    net = build_vit_fpn(image_size=32, in_channels=1, num_classes=3, fpn="skip")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    precision._warn_no_bf16.cache_clear()
    with caplog.at_level("WARNING", logger="common.engines.precision"):
        assert autocast_network(net, True, "cpu") is net and autocast_network(net, True, "cpu") is net
    assert sum("no bf16 instructions" in r.getMessage() for r in caplog.records) == 1  # said once, not per call
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert autocast_network(net, True, "cpu") is not net


def test_amp_on_the_cpu_trains_the_network_itself_in_bf16_with_float32_outputs():
    from common.engines import autocast_network, cpu_bf16_native, engine_amp

    if not cpu_bf16_native():
        from conftest import skip_or_fail

        skip_or_fail("this CPU has no bf16 instructions: amp trains in fp32 here (tested above)")
    torch.manual_seed(0)
    net = build_vit_fpn(image_size=32, in_channels=1, num_classes=3, fpn="skip").train()
    assert autocast_network(net, False, "cpu") is net and autocast_network(net, True, "cuda") is net
    assert not engine_amp(True, "cpu") and engine_amp(True, "cuda") and not engine_amp(False, "cuda")
    wrapped = autocast_network(net, True, "cpu")
    assert wrapped is not net and [id(p) for p in wrapped.parameters()] == [id(p) for p in net.parameters()]
    assert set(wrapped.net.state_dict()) == set(net.state_dict())  # checkpoints and exports are the network's own
    x = torch.randn(2, 1, 32, 32)
    out = wrapped(x)
    logits = out[0] if isinstance(out, tuple) else out
    reference = net(x)
    reference = reference[0] if isinstance(reference, tuple) else reference
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    # bf16 keeps about 3 significant digits: close to the fp32 pass, and not equal to it (it did run in bf16).
    difference = (logits - reference).abs().max().item()
    assert 0 < difference < 0.1 * reference.abs().max().item(), difference
    logits.float().pow(2).mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
