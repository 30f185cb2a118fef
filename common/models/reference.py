"""The reference a user would pick instead of distillation: MONAI's ``DynUNet`` set up as nnU-Net plans a 2D
U-Net (Isensee et al., Nature Methods 2021), trained on the same labels with the same step budget.

nnU-Net's 2D plan, as far as it depends on the image size: 3x3 convolutions, instance norm, leaky ReLU, 32
base filters doubled per level up to 512, and stride-2 downsampling until the feature map is 4 pixels or
less on a side (at most 7 times). The optimiser (SGD, Nesterov momentum 0.99, lr 0.01, polynomial decay)
and the 1:1 Dice + CE loss are in the reference bundle's config.
"""

from __future__ import annotations

from monai.networks.nets import DynUNet

__all__ = ["build_dynunet", "nnunet_2d_plan"]


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


def build_dynunet(image_size: int, in_channels: int, num_classes: int) -> DynUNet:
    """MONAI ``DynUNet`` with nnU-Net's 2D plan for ``image_size`` (no deep supervision: the reference
    trains with the bundle's plain Dice + CE loss)."""
    return DynUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, norm_name="instance",
                   act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}), res_block=False,
                   **nnunet_2d_plan(image_size))
