"""Self-supervised pre-training of the student's own ViT-Tiny on the transfer set (the paper's baselines).

``MaskedAutoencoder`` follows MAE (He et al., CVPR 2022; facebookresearch/mae ``models_mae.py``): mask 75 %
of the patches at random, encode only the visible ones, reconstruct the masked ones' normalised pixels
with a light decoder. ``MoCoV3`` follows MoCo v3 (Chen et al., ICCV 2021): two augmented views, a
momentum copy of encoder + projector, a predictor on the online branch, and the symmetric InfoNCE loss
scaled by 2τ. Both wrap the same timm ``VisionTransformer`` the student is built on, so the fine-tuning
stage loads the pre-trained encoder as it loads a distilled one (``encoder.*`` keys).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

__all__ = ["MaskedAutoencoder", "MoCoV3", "random_masking", "mae_loss", "contrastive_loss"]


def random_masking(n: int, length: int, ratio: float, noise: torch.Tensor | None = None,
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking by sorting noise.

    Args:
        n: batch size.
        length: tokens per image (patches).
        ratio: fraction of tokens to mask.
        noise: (n, length) values whose argsort decides what is kept (smallest kept); random if None.

    Returns:
        ``keep`` (n, length_kept) indices of visible tokens, ``mask`` (n, length) with 1 where masked,
        and ``restore`` (n, length), the permutation that puts shuffled tokens back in place.
    """
    kept = int(length * (1 - ratio))
    noise = torch.rand(n, length, device=device) if noise is None else noise
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :kept] = 0
    return shuffle[:, :kept], torch.gather(mask, 1, restore), restore


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    Args:
        pred: (B, L, P) predicted patch pixels.
        target: (B, L, P) patch pixels.
        mask: (B, L), 1 on masked patches.
        norm_pix: normalise each target patch by its own mean and variance (MAE's default).
    """
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's InfoNCE: the i-th query's positive is the i-th key, the batch's other keys are negatives;
    scaled by 2τ as in the paper's pseudo-code.

    Args:
        q: (B, D) predictor outputs of one view.
        k: (B, D) momentum-branch outputs of the other view.
        temperature: τ.
    """
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels) * 2 * temperature


class MaskedAutoencoder(nn.Module):
    """MAE around the student's ViT encoder.

    Args:
        encoder: timm ``VisionTransformer`` (the student's ``encoder``).
        decoder_dim: decoder width (a light decoder: the encoder is tiny).
        decoder_depth: decoder transformer blocks.
        decoder_heads: decoder attention heads.
        mask_ratio: fraction of patches masked (paper: 0.75).
        norm_pix: normalised-pixel targets.
    """

    def __init__(self, encoder: nn.Module, decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4,
                 mask_ratio: float = 0.75, norm_pix: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix
        self.patch = encoder.patch_embed.patch_size[0]
        self.channels = encoder.patch_embed.proj.in_channels
        grid = encoder.patch_embed.grid_size
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], decoder_dim))
        self.decoder = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio=4.0) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * self.channels)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, pixels (p, p, C)."""
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args:
            x: (B, C, S, S) images.
            noise: optional (B, L) masking noise (tests).

        Returns:
            ``loss`` (scalar), ``pred`` (B, L, p*p*C) and ``mask`` (B, L).
        """
        enc = self.encoder
        full = enc._pos_embed(enc.patch_embed(x))  # timm: class token + position embeddings
        prefix, tokens = full[:, :enc.num_prefix_tokens], full[:, enc.num_prefix_tokens:]
        b, length, dim = tokens.shape
        keep, mask, restore = random_masking(b, length, self.mask_ratio, noise, device=x.device)
        visible = torch.cat([prefix, torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, dim))], dim=1)
        latent = enc.norm(enc.blocks(enc.norm_pre(visible)))[:, enc.num_prefix_tokens:]
        y = self.decoder_embed(latent)
        y = torch.cat([y, self.mask_token.expand(b, length - y.shape[1], -1)], dim=1)
        y = torch.gather(y, 1, restore.unsqueeze(-1).expand(-1, -1, y.shape[-1])) + self.decoder_pos
        pred = self.decoder_pred(self.decoder_norm(self.decoder(y)))
        return {"loss": mae_loss(pred, self.patchify(x), mask, self.norm_pix), "pred": pred, "mask": mask}


def _mlp(dim_in: int, hidden: int, dim_out: int, layers: int) -> nn.Sequential:
    """MoCo v3's MLP heads: Linear-BN-ReLU blocks, the last Linear followed by an affine-free BN."""
    mods: list[nn.Module] = []
    for i in range(layers):
        d_in = dim_in if i == 0 else hidden
        d_out = dim_out if i == layers - 1 else hidden
        mods.append(nn.Linear(d_in, d_out, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        else:
            mods.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*mods)


class MoCoV3(nn.Module):
    """MoCo v3 around the student's ViT encoder (class-token features).

    Args:
        encoder: timm ``VisionTransformer`` (the student's ``encoder``, ``num_classes=0``).
        dim: output dimension of projector and predictor.
        hidden: hidden width of the MLPs.
        momentum: momentum of the key encoder at the start (paper: 0.99).
        temperature: τ (paper: 0.2).
        momentum_schedule: ``cosine`` raises the momentum from ``momentum`` towards 1 over the run (MoCo v3's
            ``adjust_moco_momentum``); ``constant`` keeps it.
    """

    def __init__(self, encoder: nn.Module, dim: int = 256, hidden: int = 1024, momentum: float = 0.99,
                 temperature: float = 0.2, momentum_schedule: str = "cosine") -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = _mlp(encoder.embed_dim, hidden, dim, 3)
        self.predictor = _mlp(dim, hidden, dim, 2)
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_encoder.parameters()) + list(self.momentum_projector.parameters()):
            p.requires_grad_(False)
        if momentum_schedule not in ("cosine", "constant"):
            raise ValueError(f"momentum_schedule must be 'cosine' or 'constant', got '{momentum_schedule}'")
        self.momentum, self.temperature, self.momentum_schedule = momentum, temperature, momentum_schedule

    def momentum_at(self, progress: float) -> float:
        """The key encoder's momentum at ``progress`` (0 at the first step, 1 at the end of the run)."""
        if self.momentum_schedule == "constant":
            return self.momentum
        return 1.0 - (1.0 - self.momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0

    @torch.no_grad()
    def momentum_update(self, progress: float = 0.0) -> None:
        """key ← m·key + (1 − m)·online, for encoder and projector (after each optimizer step), with m the
        momentum at ``progress`` through the run."""
        m = self.momentum_at(progress)
        pairs = [(self.momentum_encoder, self.encoder), (self.momentum_projector, self.projector)]
        for key_net, online in pairs:
            for k, q in zip(key_net.parameters(), online.parameters()):
                k.mul_(m).add_(q.detach(), alpha=1 - m)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Two views (B, C, S, S) -> ``loss``, the symmetric contrastive loss."""
        q1, q2 = self.predictor(self.projector(self.encoder(x1))), self.predictor(self.projector(self.encoder(x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_encoder(x1))
            k2 = self.momentum_projector(self.momentum_encoder(x2))
        loss = contrastive_loss(q1, k2, self.temperature) + contrastive_loss(q2, k1, self.temperature)
        return {"loss": loss}
