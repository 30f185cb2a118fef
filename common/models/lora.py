"""LoRA on the query and value projections of every attention block, with peft in charge.

SAM's ViT and LiteMedSAM's TinyViT fuse q, k and v into one ``qkv`` Linear, and peft can only adapt a
whole Linear, which would adapt k too. ``SplitQKV`` rewrites the fused Linear as three Linears holding
the same weight slices, with an identical function, so that ``LoraConfig(target_modules=q|v)`` adapts
exactly q and v (paper, Sec. teacher; SAMed does the same by hand). ``merge_qv_lora`` folds everything
back into plain fused Linears for export.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

__all__ = ["SplitQKV", "qkv_layout", "apply_qv_lora", "merge_qv_lora", "lora_parameter_names"]

# peft matches this against each module's full name: the q and v Linears inside a SplitQKV.
_TARGET = r".*\.qkv\.(q|v)"


def qkv_layout(attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the fused ``qkv`` output that belong to q, k and v.

    SAM's ViT reshapes the output as ``(3, heads, head_dim)``: three blocks ``[q | k | v]``
    (segment_anything/modeling/image_encoder.py, ``Attention.forward``). TinyViT reshapes it as
    ``(heads, 2 * key_dim + d)``: per head ``[q_h | k_h | v_h]`` (tiny_vit_sam.py, ``Attention.forward``).

    Args:
        attention: an attention module with a fused ``qkv`` Linear.

    Returns:
        Three index tensors into the fused output features (q, k, v).
    """
    out = attention.qkv.out_features
    if hasattr(attention, "key_dim") and hasattr(attention, "d"):  # TinyViT
        heads, kd, d = attention.num_heads, attention.key_dim, attention.d
        per_head = torch.arange(out).view(heads, 2 * kd + d)
        q, k, v = per_head.split([kd, kd, d], dim=1)
        return q.reshape(-1), k.reshape(-1), v.reshape(-1)
    third = out // 3
    rows = torch.arange(out)
    return rows[:third], rows[third : 2 * third], rows[2 * third :]


class SplitQKV(nn.Module):
    """A fused ``qkv`` Linear as three Linears ``q``, ``k``, ``v``; same output, same layout.

    Args:
        fused: the original fused Linear.
        rows: the q, k and v row indices of ``fused``'s output (see ``qkv_layout``).
    """

    def __init__(self, fused: nn.Linear, rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        has_bias = fused.bias is not None
        linears = []
        for idx in rows:
            lin = nn.Linear(fused.in_features, len(idx), bias=has_bias, device=fused.weight.device)
            with torch.no_grad():
                lin.weight.copy_(fused.weight[idx])
                if has_bias:
                    lin.bias.copy_(fused.bias[idx])
            linears.append(lin)
        self.q, self.k, self.v = linears
        self.in_features, self.out_features = fused.in_features, fused.out_features
        order = torch.cat(rows)
        identity = bool(torch.equal(order, torch.arange(len(order))))
        # position of each fused output feature within cat(q, k, v); None when the layout is [q|k|v].
        self.register_buffer("inverse", None if identity else torch.argsort(order), persistent=False)
        self.register_buffer("order", order, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features) in the fused layout."""
        out = torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)
        return out if self.inverse is None else out[..., self.inverse]

    def fuse(self) -> nn.Linear:
        """The equivalent fused Linear, LoRA merged in (peft's ``merge``) where present."""
        parts = []
        for lin in (self.q, self.k, self.v):
            if isinstance(lin, LoraLayer):
                lin.merge()
                lin = lin.get_base_layer()
            parts.append(lin)
        has_bias = parts[0].bias is not None
        fused = nn.Linear(parts[0].in_features, len(self.order), bias=has_bias, device=parts[0].weight.device)
        with torch.no_grad():
            fused.weight[self.order] = torch.cat([p.weight for p in parts])
            if has_bias:
                fused.bias[self.order] = torch.cat([p.bias for p in parts])
        return fused


def _attention_modules(encoder: nn.Module) -> list[nn.Module]:
    return [m for m in encoder.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]


def apply_qv_lora(encoder: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0) -> nn.Module:
    """Freeze ``encoder`` and add LoRA (peft) to q and v of every attention block, in place.

    peft's defaults give ``lora_A`` Kaiming-uniform and ``lora_B`` zero, so the adapted encoder equals
    the base encoder until the first update; ``scaling = alpha / rank``.

    Args:
        encoder: SAM ``ImageEncoderViT`` or TinyViT.
        rank: LoRA rank r (paper: KidneyUS 4, Autooral 2, CHAOS 16, PH2 8, DRIVE 8).
        alpha: LoRA alpha; defaults to ``rank`` (scaling 1, as SAMed).
        dropout: dropout on the LoRA branch.

    Returns:
        The same encoder, with only its LoRA parameters trainable.
    """
    attentions = _attention_modules(encoder)
    if not attentions:
        raise ValueError(f"{type(encoder).__name__} has no attention block with a fused `qkv` Linear")
    for attn in attentions:
        attn.qkv = SplitQKV(attn.qkv, qkv_layout(attn))
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        target_modules=_TARGET, bias="none")
    inject_adapter_in_model(config, encoder)
    for name, p in encoder.named_parameters():
        p.requires_grad_("lora_" in name)
    return encoder


def merge_qv_lora(encoder: nn.Module) -> nn.Module:
    """Merge LoRA into the weights and restore plain fused ``qkv`` Linears (the upstream layout), in place."""
    for attn in [m for m in encoder.modules() if isinstance(getattr(m, "qkv", None), SplitQKV)]:
        attn.qkv = attn.qkv.fuse()
    return encoder


def lora_parameter_names(module: nn.Module) -> list[str]:
    """Names of the LoRA parameters in ``module``."""
    return [n for n, _ in module.named_parameters() if "lora_" in n]
