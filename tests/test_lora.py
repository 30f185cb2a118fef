from functools import partial

import pytest
import torch
import torch.nn as nn
from segment_anything.modeling import ImageEncoderViT

from common.models import SplitQKV, apply_qv_lora, lora_parameter_names, merge_qv_lora, qkv_layout
from common.models.sam_teacher import _tiny_vit


def small_sam_encoder():
    return ImageEncoderViT(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2,
                           qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=2, out_chans=32,
                           norm_layer=partial(nn.LayerNorm, eps=1e-6))


ENCODERS = {"sam_vit": (small_sam_encoder, 64), "tinyvit": (lambda: _tiny_vit(64), 64)}


def _perturb_lora_b(encoder):
    torch.manual_seed(1)
    for name, p in encoder.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)


@pytest.mark.parametrize("kind", ENCODERS)
def test_split_qkv_is_identical_and_layout_is_right(kind):
    make, _ = ENCODERS[kind]
    attn = next(m for m in make().modules() if isinstance(getattr(m, "qkv", None), nn.Linear))
    fused = attn.qkv
    x = torch.randn(2, 5, fused.in_features)
    split = SplitQKV(fused, qkv_layout(attn))
    torch.testing.assert_close(split(x), fused(x))
    q, k, v = qkv_layout(attn)
    torch.testing.assert_close(split.q(x), fused(x)[..., q])
    assert sorted(torch.cat([q, k, v]).tolist()) == list(range(fused.out_features))
    if kind == "tinyvit":  # per head [q_h | k_h | v_h]: the second q row block starts after head 0's v
        per_head = 2 * attn.key_dim + attn.d
        assert q[attn.key_dim].item() == per_head
    torch.testing.assert_close(split.fuse().weight, fused.weight)


@pytest.mark.parametrize("kind", ENCODERS)
def test_lora_at_init_equals_base_and_adapts_only_q_and_v(kind):
    make, size = ENCODERS[kind]
    torch.manual_seed(0)
    encoder = make().eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        base = encoder(x)
    apply_qv_lora(encoder, rank=4)
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), base)
    names = lora_parameter_names(encoder)
    n_attn = sum(isinstance(getattr(m, "qkv", None), SplitQKV) for m in encoder.modules())
    assert len(names) == n_attn * 2 * 2  # (q, v) x (A, B)
    assert all(".qkv.q." in n or ".qkv.v." in n for n in names)
    assert {n for n, p in encoder.named_parameters() if p.requires_grad} == set(names)


@pytest.mark.parametrize("kind", ENCODERS)
def test_trained_lora_changes_q_and_v_not_k_and_merges_exactly(kind):
    make, size = ENCODERS[kind]
    torch.manual_seed(0)
    encoder = make().eval()
    attn = next(m for m in encoder.modules() if isinstance(getattr(m, "qkv", None), nn.Linear))
    original = nn.Linear(attn.qkv.in_features, attn.qkv.out_features)
    original.load_state_dict(attn.qkv.state_dict())
    apply_qv_lora(encoder, rank=2)
    _perturb_lora_b(encoder)
    encoder.eval()
    tokens = torch.randn(3, attn.qkv.q.in_features)
    q, k, v = qkv_layout(attn)
    out, ref = attn.qkv(tokens), original(tokens)
    torch.testing.assert_close(out[..., k], ref[..., k])
    assert not torch.allclose(out[..., q], ref[..., q]) and not torch.allclose(out[..., v], ref[..., v])
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        adapted = encoder(x)
        merge_qv_lora(encoder)
        assert all(type(m.qkv) is nn.Linear for m in encoder.modules() if hasattr(m, "qkv"))
        torch.testing.assert_close(encoder(x), adapted, rtol=1e-4, atol=1e-5)
