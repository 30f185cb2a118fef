"""The student: timm ViT-Tiny + a simple feature pyramid (FPN) segmentation head.

The pyramid is built from the last encoder layer alone (ViTDet's simple feature pyramid, Li et al.
2022): the stride-16 token map is deconvolved to strides 4 and 8, kept at 16 and pooled to 32, fused
top-down FPN-style (Lin et al. 2017) into a stride-4 map, classified, and upsampled to the input size.

Two pyramids (``fpn`` of ``build_vit_fpn``):

- ``light`` (default): depthwise-separable 3x3 convolutions where the maps are large (192 channels at
  strides 4 and 8; dense 256 at 16 and 32), each level followed by GroupNorm + GELU, so the head costs
  less than the encoder it serves (0.41 of the encoder's FLOPs at 256², 0.27 at 512²; attention counted,
  ``common.models.count_gflop``).
  On the demo it matched the paper's head within 0.01 Dice (README, "Speed and size of the student").
- ``paper``: 256 channels and dense 3x3 convolutions at every stride, the paper's student (~8.4 M
  parameters, ~33 MB fp32); 2.7 times the encoder's FLOPs at 256² (1.8 at 512²), most of it at stride 4.
  Kept for exact reproduction.
- ``skip``: the ``light`` pyramid plus a shallow convolutional stem on the image (``ConvStem``: features at
  strides 1, 2 and 4) whose maps join the pyramid's stride-4 output on its way up to full resolution
  (``SkipDecoder``, U-Net-style skips), so the student can draw what is thinner than its 16-px patches. The
  encoder, and so TS-KD's hidden-state term, is unchanged.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from common.errors import CheckpointError
from common.models.checkpoints import load_state_file

__all__ = ["ViTFPN", "SimpleFeaturePyramid", "ConvStem", "SkipDecoder", "FPN_PRESETS", "build_vit_fpn",
           "load_encoder_weights", "model_size"]

# Pyramid width per stride (4, 8, 16, 32); whether strides 4 and 8 use separable 3x3 convolutions; whether each
# level's 3x3 convolution is followed by GroupNorm + GELU; optionally the convolutional stem's widths at strides
# 1, 2 and 4 and the skip decoder's at strides 4, 2 and 1.
STEM_WIDTHS, DECODER_WIDTHS = (16, 32, 64), (96, 48, 32)
FPN_PRESETS = {
    "light": {"widths": (192, 192, 256, 256), "separable": True, "activate": True},
    "paper": {"widths": (256, 256, 256, 256), "separable": False, "activate": False},
    "skip": {"widths": (192, 192, 256, 256), "separable": True, "activate": True,
             "stem": STEM_WIDTHS, "decoder": DECODER_WIDTHS},
}


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.GroupNorm(1, cout), nn.GELU())


def _conv3x3(cin: int, cout: int, separable: bool) -> nn.Module:
    """A 3x3 convolution, or its depthwise-separable form (3x3 per channel, then 1x1 across channels)."""
    if not separable:
        return nn.Conv2d(cin, cout, 3, padding=1)
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, cout, 1))


class _Level(nn.Module):
    """One pyramid level: rescale the stride-16 map, project it (lateral), add the coarser level, smooth."""

    def __init__(self, scale: nn.Module, in_width: int, width: int, coarser: int, separable: bool,
                 activate: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.lateral = nn.Conv2d(in_width, width, 1)
        # The coarser level is projected to this width before it is upsampled (cheaper than after).
        self.top = nn.Identity() if coarser in (0, width) else nn.Conv2d(coarser, width, 1)
        conv = _conv3x3(width, width, separable)
        self.output = nn.Sequential(conv, nn.GroupNorm(8, width), nn.GELU()) if activate else conv

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None) -> torch.Tensor:
        lateral = self.lateral(self.scale(x))
        if coarser is not None:
            lateral = lateral + F.interpolate(self.top(coarser), size=lateral.shape[-2:], mode="nearest")
        return self.output(lateral)


class SimpleFeaturePyramid(nn.Module):
    """Stride-16 features -> fused stride-4 map.

    Args:
        in_dim: encoder width (192 for ViT-Tiny).
        widths: channels at strides 4, 8, 16 and 32.
        separable: depthwise-separable 3x3 convolutions at strides 4 and 8.
        activate: GroupNorm + GELU after each level's 3x3 convolution (the paper's pyramid is linear).
    """

    def __init__(self, in_dim: int, widths: tuple[int, int, int, int] = (256, 256, 256, 256),
                 separable: bool = False, activate: bool = False) -> None:
        super().__init__()
        # Scales x4, x2, x1, x1/2 of the stride-16 token map (ViTDet).
        scales = [
            nn.Sequential(_up(in_dim, in_dim // 2), nn.ConvTranspose2d(in_dim // 2, in_dim // 4, 2, stride=2)),
            nn.ConvTranspose2d(in_dim, in_dim // 2, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        in_widths = [in_dim // 4, in_dim // 2, in_dim, in_dim]
        coarser = list(widths[1:]) + [0]
        # Fine to coarse; run coarse to fine (top-down). A plain loop over a ModuleList: TorchScript-friendly.
        self.levels = nn.ModuleList([_Level(s, i, w, c, separable and k < 2, activate)
                                     for k, (s, i, w, c) in enumerate(zip(scales, in_widths, widths, coarser))][::-1])
        self.out_dim = widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim, g, g) -> (B, widths[0], 4g, 4g)."""
        fused: torch.Tensor | None = None
        for level in self.levels:
            fused = level(x, fused)
        assert fused is not None
        return fused


def _block(cin: int, cout: int, stride: int = 1, separable: bool = False) -> nn.Sequential:
    """3x3 convolution (dense or depthwise-separable) + GroupNorm + GELU."""
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1) if not separable else _conv3x3(cin, cout, True)
    return nn.Sequential(conv, nn.GroupNorm(min(8, cout // 4), cout), nn.GELU())


class ConvStem(nn.Module):
    """A few cheap convolutions on the image: features at strides 1, 2 and 4 (one 3x3 block each; the last two
    downsample), the detail the ViT's 16-px patches average away.

    Args:
        in_channels: image channels.
        widths: channels at strides 1, 2 and 4.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int] = STEM_WIDTHS) -> None:
        super().__init__()
        cins = (in_channels,) + tuple(widths[:-1])
        self.stages = nn.ModuleList([_block(c, w, 1 if k == 0 else 2) for k, (c, w) in enumerate(zip(cins, widths))])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, S, S) -> [(B, w1, S, S), (B, w2, S/2, S/2), (B, w4, S/4, S/4)]."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class SkipDecoder(nn.Module):
    """The pyramid's stride-4 map up to full resolution, joined at strides 4, 2 and 1 with the stem's features
    (concatenated, then a separable 3x3 block), then classified per pixel.

    Args:
        in_dim: the pyramid's stride-4 width.
        stem: the stem's widths at strides 1, 2 and 4.
        widths: the decoder's widths at strides 4, 2 and 1.
        num_classes: classes including background.
    """

    def __init__(self, in_dim: int, stem: tuple[int, int, int], widths: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        cins = (in_dim,) + tuple(widths[:-1])
        self.fuse = nn.ModuleList([_block(c + s, w, separable=True)
                                   for c, s, w in zip(cins, tuple(stem)[::-1], widths)])
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """x (B, in_dim, S/4, S/4), skips from ``ConvStem`` -> logits (B, K, S, S)."""
        for k, fuse in enumerate(self.fuse):
            skip = skips[len(skips) - 1 - k]
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, skip], 1))
        return self.classifier(x)


class ViTFPN(nn.Module):
    """ViT encoder + simple feature pyramid + per-pixel classifier.

    Args:
        encoder: a timm ``VisionTransformer`` built with ``num_classes=0``.
        num_classes: classes including background.
        fpn: ``light``, ``paper`` or ``skip`` (see the module's docstring), or a dict of ``SimpleFeaturePyramid``
            arguments, with ``stem`` and ``decoder`` widths for the convolutional skips.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, fpn: str | dict = "light") -> None:
        super().__init__()
        if isinstance(fpn, str):
            if fpn not in FPN_PRESETS:
                raise ValueError(f"fpn must be one of {sorted(FPN_PRESETS)}, got '{fpn}'")
            fpn = FPN_PRESETS[fpn]
        fpn = dict(fpn)
        stem, decoder = fpn.pop("stem", None), fpn.pop("decoder", None)
        self.encoder = encoder
        self.fpn = SimpleFeaturePyramid(encoder.embed_dim, **fpn)
        width, separable = self.fpn.out_dim, fpn.get("separable", False)
        self.stem: ConvStem | None = None
        if stem:
            in_channels = encoder.patch_embed.proj.in_channels
            self.stem = ConvStem(in_channels, tuple(stem))
            self.head = SkipDecoder(width, tuple(stem), tuple(decoder or DECODER_WIDTHS), num_classes)
        else:
            hidden = width if separable else width // 2  # the paper's head halves its 256 channels
            self.head = nn.Sequential(_conv3x3(width, hidden, separable), nn.GroupNorm(8, hidden),
                                      nn.GELU(), nn.Conv2d(hidden, num_classes, 1))
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> last hidden state (B, D, S/16, S/16), after the encoder's final norm."""
        last = len(self.encoder.blocks) - 1
        return self.encoder.forward_intermediates(x, indices=[last], norm=True, output_fmt="NCHW",
                                                  intermediates_only=True)[0]

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) -> (logits (B, K, S, S), last hidden state (B, D, S/16, S/16))."""
        hidden = self.forward_features(x)
        if self.stem is not None:
            return self.head(self.fpn(hidden), self.stem(x)), hidden
        logits = self.head(self.fpn(hidden))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False), hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> logits (B, K, S, S)."""
        return self.forward_with_hidden(x)[0]


def build_vit_fpn(image_size: int = 256, in_channels: int = 1, num_classes: int = 2, fpn: str = "light",
                  num_heads: int | None = 3, encoder_checkpoint: str | None = None, init_head: bool = False,
                  resample_pos_embed: bool = True) -> ViTFPN:
    """ViT-Tiny (dim 192, depth 12, patch 16) + FPN head at the task's input size.

    Args:
        image_size: input side S (a multiple of 16).
        in_channels: image channels (1 grey, 3 RGB).
        num_classes: classes including background.
        fpn: ``light`` (default), ``paper`` or ``skip`` pyramid (module docstring).
        num_heads: attention heads: 3 for timm's (and tskd's) ViT-Tiny, 12 for MAE-lite's ImageNet ViT-Tiny
            (paper, baselines). Weights of one head count load into the other without error but compute a
            different function, so a checkpoint that records its count (``num_heads``, or inside ``args`` /
            ``config``) must agree; ``None`` takes the count from the checkpoint, which must then record it.
        encoder_checkpoint: optional encoder weights (see ``load_encoder_weights``).
        init_head: also load the FPN head from ``encoder_checkpoint`` when it holds one (a distilled student).
        resample_pos_embed: when the checkpoint's position embeddings are for another grid, resample them to the
            student's (timm's way); False keeps the student's own initialisation (the paper, for MAE-lite).

    Returns:
        The student, randomly initialised unless ``encoder_checkpoint`` is given.
    """
    recorded = checkpoint_num_heads(encoder_checkpoint) if encoder_checkpoint else None
    if num_heads is None:
        if recorded is None:
            raise CheckpointError(
                f"'{encoder_checkpoint or '(no encoder_checkpoint)'}' does not record how many attention heads its "
                "ViT-Tiny uses, and num_heads was not given. Weights of 3 and 12 heads have the same shapes but "
                "compute different functions: give num_heads (3 for timm's and tskd's ViT-Tiny, 12 for MAE-lite's).")
        num_heads = recorded
    elif recorded is not None and recorded != num_heads:
        raise CheckpointError(f"'{encoder_checkpoint}' records a ViT-Tiny with {recorded} attention heads, but "
                              f"num_heads is {num_heads}: set num_heads to {recorded}.")
    encoder = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image_size,
                                in_chans=in_channels, num_classes=0, num_heads=num_heads)
    model = ViTFPN(encoder, num_classes=num_classes, fpn=fpn)
    if encoder_checkpoint:
        load_encoder_weights(model, encoder_checkpoint, with_head=init_head, resample_pos_embed=resample_pos_embed)
    return model


def checkpoint_num_heads(path: str) -> int | None:
    """The attention-head count a checkpoint records (top-level ``num_heads``, or in an ``args`` /
    ``config`` / ``cfg`` dict, as training scripts save their settings), or None."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: load_encoder_weights reports it with the fix
        return None
    if not isinstance(raw, dict):
        return None
    for holder in (raw, *(raw.get(k) for k in ("args", "config", "cfg"))):
        if isinstance(holder, dict) and isinstance(holder.get("num_heads"), int):
            return holder["num_heads"]
    return None


_PREFIXES = ("module.", "encoder.", "backbone.", "student.encoder.")
# MAE/MoCo parts that are not the encoder (facebookresearch/mae models_mae.py, MAE-lite).
_SKIP = ("decoder", "mask_token", "head.", "fc_norm", "projector", "predictor")


def load_encoder_weights(model: ViTFPN, path: str, with_head: bool = False, resample_pos_embed: bool = True) -> list[str]:
    """Load ViT encoder weights into ``model.encoder``; the FPN head keeps its initialisation unless
    ``with_head`` and the file holds a ViT-FPN head (``fpn.*``, ``head.*``) of the same shapes.

    Accepts a timm/MAE-style encoder state dict, a full ViTFPN state dict, or a pretrain-bundle output
    (keys prefixed ``encoder.``). The position embedding is resampled when the grid differs (or, with
    ``resample_pos_embed`` False, not loaded: the student keeps its own) and the patch embedding is adapted
    when the channel count differs.

    Args:
        model: the student.
        path: checkpoint file.
        with_head: also load the FPN head.
        resample_pos_embed: resample position embeddings of another grid, rather than leave them out.

    Returns:
        The keys that were loaded (encoder keys without prefix; head keys as ``fpn.*`` / ``head.*``).
    """
    what = "student encoder checkpoint"
    hint = "Give a ViT-Tiny (dim 192, patch 16) encoder checkpoint, e.g. models/encoder.pt of a pretrain bundle."
    state = load_state_file(path, what, hint)
    target = model.encoder.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix) and key[len(prefix):] in target:
                key = key[len(prefix):]
                break
        if key not in target or key.startswith(_SKIP):
            continue
        want = target[key].shape
        if key == "pos_embed" and value.shape != want:
            if not resample_pos_embed:
                continue
            prefix_tokens = 0 if model.encoder.no_embed_class else model.encoder.num_prefix_tokens
            grid = model.encoder.patch_embed.grid_size
            value = resample_abs_pos_embed(value, new_size=list(grid), num_prefix_tokens=prefix_tokens)
        elif key == "patch_embed.proj.weight" and value.shape[1] != want[1]:
            value = adapt_input_conv(want[1], value)
        if value.shape != want:
            raise CheckpointError(f"{what} '{path}': {key} has shape {tuple(value.shape)}, the student wants "
                                  f"{tuple(want)}. {hint}")
        loaded[key] = value
    blocks = [k for k in target if k.startswith("blocks.")]
    if not all(k in loaded for k in blocks):
        absent = [k for k in blocks if k not in loaded]
        raise CheckpointError(f"{what} '{path}' lacks {len(absent)} of the {len(blocks)} transformer-block tensors "
                              f"(first: {absent[0]}). {hint}")
    model.encoder.load_state_dict(loaded, strict=False)
    head = {}
    if with_head:
        own = {k: v for k, v in model.state_dict().items() if k.startswith(("fpn.", "head.", "stem."))}
        head = {k: v for k, v in state.items() if k in own}
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in head.items() if v.shape != own[k].shape]
        if wrong:
            raise CheckpointError(f"{what} '{path}': its FPN head does not fit ({wrong[0]}; is num_classes the same?). "
                                  "Set init_head to false to start the head fresh.")
        model.load_state_dict(head, strict=False)
    return sorted(loaded) + sorted(head)


def model_size(model: nn.Module) -> tuple[int, float]:
    """Returns (number of parameters, size in MB of the fp32 state dict)."""
    params = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    return params, size
