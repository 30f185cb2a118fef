import pytest
import torch
from segment_anything import sam_model_registry

from common.errors import CheckpointError
from common.models import (TrainableState, build_litemedsam_teacher, build_sam_teacher, build_teacher,
                           litemedsam_checkpoint_path, merge_qv_lora)


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """A state dict in the official sam_vit_b format (1024² input, 4 mask tokens), random values."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return str(path)


@pytest.mark.parametrize("size", [256, 512])
def test_vit_b_checkpoint_loads_strictly_at_other_sizes(vit_b_checkpoint, size):
    source = torch.load(vit_b_checkpoint, weights_only=True)
    teacher = build_sam_teacher(vit_b_checkpoint, "vit_b", image_size=size, num_classes=5, lora_rank=4)
    enc = teacher.image_encoder
    assert enc.pos_embed.shape == (1, size // 16, size // 16, 768)
    assert enc.blocks[2].attn.rel_pos_h.shape == (2 * size // 16 - 1, 64)  # global block: interpolated
    assert enc.blocks[0].attn.rel_pos_h.shape == (27, 64)  # windowed block: as in the checkpoint
    torch.testing.assert_close(enc.patch_embed.proj.weight, source["image_encoder.patch_embed.proj.weight"])
    torch.testing.assert_close(enc.blocks[3].attn.qkv.q.base_layer.weight,
                               source["image_encoder.blocks.3.attn.qkv.weight"][:768])
    # 5 classes from 4 pretrained mask tokens: cycled.
    torch.testing.assert_close(teacher.mask_decoder.mask_tokens.weight[4], source["mask_decoder.mask_tokens.weight"][0])
    if size == 256:
        teacher.eval()
        with torch.no_grad():
            out = teacher.forward_all(torch.rand(1, 1, size, size))
        assert out["low_res_logits"].shape == (1, 5, size // 4, size // 4)
        assert out["logits"].shape == (1, 5, size, size)
        assert out["hidden"].shape == (1, 256, size // 16, size // 16)


def test_wrong_or_missing_checkpoints_name_the_file(vit_b_checkpoint, tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="nope.pth.*segment-anything"):
        build_sam_teacher(missing, "vit_b", image_size=256)
    # LiteMedSAM weights are not a ViT-B: every mismatch is listed in one error naming the file.
    with pytest.raises(CheckpointError, match=r"lite_medsam.pth' does not fit the model: .*missing.*unexpected"):
        build_sam_teacher(litemedsam_checkpoint_path(), "vit_b", image_size=256)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(open(vit_b_checkpoint, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="broken.pth' could not be read"):
        build_sam_teacher(str(broken), "vit_b", image_size=256)
    state = torch.load(vit_b_checkpoint, weights_only=True)
    state["image_encoder.neck.0.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad_shape.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"bad_shape.pth.*neck.0.weight: file \(3, 3\)"):
        build_sam_teacher(str(bad), "vit_b", image_size=256)


def test_litemedsam_refuses_a_side_it_cannot_downsample_with_our_error():
    from common.settings import SettingError

    with pytest.raises(SettingError, match=r"image_size must be a positive multiple of 32 \(LiteMedSAM.*use e.g. 32 or 64"):
        build_litemedsam_teacher(image_size=48, num_classes=2)


@pytest.fixture(scope="module")
def lite_teacher():
    torch.manual_seed(0)
    return build_litemedsam_teacher(image_size=64, num_classes=3, lora_rank=2)


def test_litemedsam_loads_the_shipped_weights(lite_teacher):
    shipped = torch.load(litemedsam_checkpoint_path(), weights_only=True)
    torch.testing.assert_close(lite_teacher.image_encoder.patch_embed.seq[0].c.weight,
                               shipped["image_encoder.patch_embed.seq.0.c.weight"])
    out = lite_teacher.eval().forward_all(torch.rand(2, 1, 64, 64))
    assert out["logits"].shape == (2, 3, 64, 64) and out["hidden"].shape == (2, 256, 16, 16)


def test_only_lora_and_decoder_receive_gradients(lite_teacher):
    teacher = lite_teacher.train()
    teacher.zero_grad()
    x = torch.rand(2, 1, 64, 64)
    y = torch.randint(0, 3, (2, 64, 64))
    torch.nn.functional.cross_entropy(teacher(x), y).backward()
    trainable = {n for n, p in teacher.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("mask_decoder.") or n == "prompt_encoder.no_mask_embed.weight"
                             for n in trainable)
    assert any("lora_" in n for n in trainable) and any(n.startswith("mask_decoder.") for n in trainable)
    for n, p in teacher.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient reaches {n}"
        else:
            assert p.grad is None, f"a gradient reaches frozen {n}"
    # lora_B starts at zero, so only it gets a non-zero gradient on the first step; it must.
    assert all(p.grad.abs().sum() > 0 for n, p in teacher.named_parameters() if "lora_B" in n)


def test_the_encoder_in_chunks_gives_the_whole_batchs_outputs_and_gradients(lite_teacher):
    teacher = lite_teacher.train()
    x = torch.rand(3, 1, 64, 64)
    y = torch.randint(0, 3, (3, 64, 64))
    results = {}
    for chunk in (3, 1, 2):  # the whole batch; one image at a time (the CPU default); uneven chunks
        teacher.encoder_chunk = chunk
        teacher.zero_grad()
        out = teacher.forward_all(x)
        torch.nn.functional.cross_entropy(out["logits"], y).backward()
        grads = {n: p.grad.clone() for n, p in teacher.named_parameters() if p.requires_grad}
        results[chunk] = (out["hidden"].detach(), out["logits"].detach(), grads)
    teacher.encoder_chunk = 0
    hidden, logits, grads = results[3]
    for chunk in (1, 2):
        torch.testing.assert_close(results[chunk][0], hidden, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(results[chunk][1], logits, rtol=1e-4, atol=1e-5)
        for n, g in grads.items():
            torch.testing.assert_close(results[chunk][2][n], g, rtol=1e-3, atol=1e-6, msg=n)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_trained_state_round_trip_and_merged_export(lite_teacher, tmp_path):
    teacher = lite_teacher.eval()
    torch.manual_seed(3)
    for n, p in teacher.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = teacher(x)
    trained = tmp_path / "model.pt"
    torch.save(TrainableState(teacher).state_dict(), trained)
    saved = torch.load(trained, weights_only=True)
    assert all("lora_" in k or k.startswith(("mask_decoder.", "prompt_encoder.")) for k in saved)
    rebuilt = build_teacher("litemedsam", trained=str(trained), image_size=64, num_classes=3, lora_rank=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), expected)
    plain = build_litemedsam_teacher(image_size=64, num_classes=3, lora_rank=2)
    merge_qv_lora(plain.image_encoder)  # upstream layout, no LoRA
    plain.load_state_dict(teacher.merged_state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="model.pt.*LoRA rank"):
        build_teacher("litemedsam", trained=str(trained), image_size=64, num_classes=3, lora_rank=4)
