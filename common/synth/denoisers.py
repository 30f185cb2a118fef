"""Denoisers for the DDPM that makes the transfer set: diffusers' UNet and a Swin-transformer U-Net.

Both take a noisy image batch (B, C, S, S) in [-1, 1] and integer timesteps (B,) and predict the noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["UNetDenoiser", "SwinDenoiser", "build_denoiser", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Ho et al. 2020, after Vaswani et al.): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class UNetDenoiser(nn.Module):
    """diffusers' ``UNet2DModel`` returning a plain tensor.

    Args:
        image_size: side S.
        channels: image channels (1 grey, 3 RGB).
        base: width of the first level; levels (base, 2 base, 2 base, 4 base), attention at the two coarsest.
    """

    def __init__(self, image_size: int, channels: int = 1, base: int = 32) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=channels, out_channels=channels, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(base, 2 * base, 2 * base, 4 * base),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S), t (B,) -> predicted noise (B, C, S, S)."""
        return self.unet(x, t).sample


class SwinDenoiser(nn.Module):
    """Swin-transformer U-Net denoiser (after Pan et al. 2023, Phys. Med. Biol. 68:105004).

    MONAI's ``SwinUNETR`` (shifted-window transformer encoder, convolutional decoder) in 2D; the timestep
    enters as ``time_channels`` sinusoidal-embedding maps concatenated to the input (a simpler conditioning
    than the paper's per-block embedding, which SwinUNETR does not expose).

    Args:
        image_size: side S (a multiple of 32, at least 64).
        channels: image channels.
        feature_size: SwinUNETR width (a multiple of 12).
        time_channels: channels of the timestep embedding.
    """

    def __init__(self, image_size: int, channels: int = 1, feature_size: int = 24, time_channels: int = 8) -> None:
        super().__init__()
        from monai.networks.nets import SwinUNETR

        if image_size % 32 or image_size < 64:  # five 2x downsamplings; the bottleneck norm needs > 1 pixel
            raise ValueError(f"the Swin denoiser needs image_size divisible by 32 and at least 64, got {image_size}")
        self.time_channels = time_channels
        self.time_mlp = nn.Sequential(nn.Linear(time_channels, 4 * time_channels), nn.SiLU(),
                                      nn.Linear(4 * time_channels, time_channels))
        self.swin = SwinUNETR(in_channels=channels + time_channels, out_channels=channels, feature_size=feature_size,
                              spatial_dims=2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S), t (B,) -> predicted noise (B, C, S, S)."""
        emb = self.time_mlp(timestep_embedding(t, self.time_channels))
        maps = emb[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return self.swin(torch.cat([x, maps], dim=1))


def build_denoiser(kind: str = "unet", image_size: int = 128, channels: int = 1, width: int = 32) -> nn.Module:
    """``unet`` (diffusers UNet2DModel) or ``swin`` (Swin-transformer U-Net).

    Args:
        kind: denoiser family.
        image_size: side S.
        channels: image channels.
        width: UNet base width, or SwinUNETR feature size (rounded to a multiple of 12).

    Returns:
        The denoiser, randomly initialised.
    """
    if kind == "unet":
        return UNetDenoiser(image_size, channels, base=width)
    if kind == "swin":
        return SwinDenoiser(image_size, channels, feature_size=max(12, 12 * round(width / 12)))
    raise ValueError(f"unknown denoiser '{kind}': use 'unet' or 'swin'")
