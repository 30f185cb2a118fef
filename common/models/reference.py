"""The reference a user would pick instead of distillation: MONAI's ``DynUNet`` set up as nnU-Net plans a 2D
U-Net (Isensee et al., Nature Methods 2021), trained on the same labels with the same step budget.

nnU-Net's 2D plan, as far as it depends on the image size: 3x3 convolutions, instance norm with affine
parameters, leaky ReLU, 32 base filters doubled per level up to 512, stride-2 downsampling until the feature
map is 4 pixels or less on a side (at most 7 times), and deep supervision on every decoder level but the
coarsest. The optimiser (SGD, Nesterov momentum 0.99, lr 0.01, polynomial decay), the loss (CE + Dice over the
foreground classes computed over the batch, ``common.losses.DeepSupervised``) and the augmentation
(``common.data.nnunet_augmentation``) are in the reference bundle's config.
"""

from __future__ import annotations

from monai.networks.nets import DynUNet

__all__ = ["build_dynunet", "nnunet_2d_plan", "nnunet_batch_size", "deep_supervision_heads"]


def nnunet_2d_plan(image_size: int, base_filters: int = 32, max_filters: int = 512, min_feature: int = 4,
                   max_downsamplings: int = 7) -> dict:
    """Strides, kernels and filters of nnU-Net's 2D U-Net for a square ``image_size`` input."""
    strides, size = [1], int(image_size)
    while size // 2 >= min_feature and len(strides) - 1 < max_downsamplings:
        strides.append(2)
        size //= 2
    levels = len(strides)
    return {"kernel_size": [3] * levels, "strides": strides, "upsample_kernel_size": strides[1:],
            "filters": [min(base_filters * 2 ** i, max_filters) for i in range(levels)]}


def nnunet_batch_size(n_images: int, largest: int = 6) -> int:
    """nnU-Net's rule for the 2D batch when the patch is the whole image: a batch covers at most 5 % of the
    training images and holds at least 2; ``largest`` caps it where nnU-Net would cap it by GPU memory. On a few
    dozen images that is 2 (nnU-Net's own plan for the demo at 5, 10 and 50 labels)."""
    return int(max(2, min(largest, round(0.05 * n_images))))


def deep_supervision_heads(image_size: int) -> int:
    """The extra outputs nnU-Net supervises for ``image_size``: every decoder level but the full-resolution one
    (the network's main output) and the coarsest (which nnU-Net weights 0)."""
    return max(len(nnunet_2d_plan(image_size)["strides"]) - 3, 0)


def build_dynunet(image_size: int, in_channels: int, num_classes: int, deep_supervision: bool = True) -> DynUNet:
    """MONAI ``DynUNet`` with nnU-Net's 2D plan for ``image_size``.

    With ``deep_supervision`` (nnU-Net's way) the network in training mode returns its main output and the
    deeper decoder levels' outputs, upsampled to the input size and stacked on dimension 1 (train it with
    ``common.losses.DeepSupervised``); in evaluation mode it returns the main output only, the plain U-Net's
    (MONAI still computes the heads' 1x1 convolutions: under 0.1 % of the GFLOP). ``False`` builds the network
    without the heads.
    """
    heads = deep_supervision_heads(image_size) if deep_supervision else 0
    return DynUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                   norm_name=("instance", {"affine": True}),
                   act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}), res_block=False,
                   deep_supervision=heads > 0, deep_supr_num=max(heads, 1), **nnunet_2d_plan(image_size))
