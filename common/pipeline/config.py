"""One run's configuration, built and checked once before any stage starts.

``RunConfig`` holds every setting of the main job; ``RunConfig.checked()`` applies every rule a later stage would
enforce (each network's own rule on the input side, the label budgets, the checkpoints, the dataset's splits, a
folder of unlabelled images) and returns the configuration with the profile's defaults filled in, or raises one
``TskdError`` naming the setting and the fix.
"""

from __future__ import annotations

import dataclasses
import os

from common.data import check_unlabelled_folder, load_datalist, prepare_demo, read_datalist_info, validation_items
from common.errors import TskdError
from common.models import checkpoint_num_heads, load_state_file
from common.pipeline.budget_scale import parse_budget_scale
from common.pipeline.profiles import METHODS, PROFILES, stage_budget
from common.provenance import check_writable
from common.settings import LITEMEDSAM_MULTIPLE, PATCH, check_image_size, check_labels

__all__ = ["RunConfig", "MAE_LITE_HINT", "NETWORK_RULES", "imagenet_mae_heads", "prepared_image_size"]

MAE_LITE_HINT = ("ImageNet-MAE initialisation needs MAE-lite's ViT-Tiny weights (Wang et al., ICML 2023), published "
                 "with https://github.com/wangsr126/mae-lite; this project cannot download them. Pass the file with "
                 "--imagenet_mae_checkpoint.")
# What each network needs of the input side: (multiple, whose rule). The student's ViT-Tiny and SAM's ViT cut
# 16-pixel patches; LiteMedSAM's TinyViT downsamples by 32; nnU-Net's 2D plan halves any multiple of 16 cleanly.
NETWORK_RULES = {"student": (PATCH, "the student's ViT-Tiny cuts 16-pixel patches"),
                 "sam": (PATCH, "SAM's ViT cuts 16-pixel patches"),
                 "litemedsam": LITEMEDSAM_MULTIPLE}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The main job's settings (the command line's options, same names)."""

    dataset: str = "demo"
    data_dir: str | None = None
    method: str = "tskd"
    profile: str = "quick"
    transfer: int = 0
    transfer_source: str | None = None
    unlabelled_dir: str = ""
    denoiser: str = "unet"
    labels: int = 0
    val_labels: int | None = None
    teacher: str = "litemedsam"
    sam_checkpoint: str = ""
    teacher_checkpoint: str = ""
    fpn: str = "skip"
    imagenet_mae_checkpoint: str = ""
    imagenet_mae_pos_embed: bool = False
    num_heads: int = 0
    seed: int = 1234
    image_size: int = 0
    budget_scale: float | str = "auto"
    out: str = "runs/demo"

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @property
    def profile_settings(self) -> dict:
        return PROFILES[self.profile]

    def stage_budget(self, stage: str) -> dict:
        """The profile's budget of ``stage`` (``teacher``, ``student``, ...) at this run's ``budget_scale``, which
        the run resolves before its first stage (``auto``: common.pipeline.budget_scale)."""
        if self.budget_scale == "auto":
            raise RuntimeError("budget_scale 'auto' is resolved by run_pipeline or the grid before a stage is "
                               "trained (common.pipeline.budget_scale.resolve_budget_scale); give a number here.")
        return stage_budget(self.profile_settings, stage, float(self.budget_scale))

    def checked(self) -> "RunConfig":
        """This configuration with the profile's defaults filled in, after every check that can be made before
        the first stage (one ``TskdError`` each)."""
        if self.method not in METHODS:
            raise TskdError(f"--method: unknown method '{self.method}' (choose from {', '.join(METHODS)}).")
        if self.profile not in PROFILES:
            raise TskdError(f"--profile: unknown profile '{self.profile}' (choose from {', '.join(sorted(PROFILES))}).")
        check_labels(self.labels, "--labels")
        if self.val_labels is not None:
            check_labels(self.val_labels, "--val_labels")
        config = self.replace(budget_scale=parse_budget_scale(self.budget_scale))
        if config.transfer_source is None:
            config = config.replace(transfer_source=PROFILES[self.profile]["transfer_source"])
        if not config.image_size and config.data_dir is not None:
            config = config.replace(image_size=prepared_image_size(config.dataset, config.data_dir))
        if config.image_size:
            for network in ("student", "litemedsam" if config.teacher == "litemedsam" else "sam"):
                check_image_size(config.image_size, "--image_size", *NETWORK_RULES[network])
        config._check_transfer()
        config._check_checkpoints()
        if config.method == "imagenet_mae":
            config = config.replace(num_heads=imagenet_mae_heads(config.imagenet_mae_checkpoint, config.num_heads))
        if config.data_dir is not None:
            config.check_dataset(config.data_dir)
        return config

    def _check_transfer(self) -> None:
        if self.transfer_source == "unlabelled":
            if self.unlabelled_dir and not os.path.isdir(self.unlabelled_dir):
                raise TskdError(f"--unlabelled_dir '{self.unlabelled_dir}' is not a folder.")
            if not self.unlabelled_dir and not self.labels:
                raise TskdError("--transfer_source unlabelled needs images without labels: give --unlabelled_dir, or "
                                "a label budget (--labels N) below the training split, whose other images are then used.")
        if self.transfer < 0:
            raise TskdError(f"--transfer must be 0 (the profile's size) or a positive number of images, got "
                            f"{self.transfer}.")

    def _check_checkpoints(self) -> None:
        if self.teacher_checkpoint:
            load_state_file(self.teacher_checkpoint, "trained teacher checkpoint (--teacher_checkpoint)",
                            "Pass a teacher bundle's models/model.pt, or leave it out to train the teacher.")
        if self.method != "imagenet_mae" and self.num_heads not in (0, 3) and self.method != "scratch":
            raise TskdError(f"--num_heads {self.num_heads} needs --method imagenet_mae or scratch: the pre-training "
                            "stages build timm's 3-head ViT-Tiny, whose weights would load into another head count "
                            "without error and compute a different function.")
        if self.sam_checkpoint:
            load_state_file(self.sam_checkpoint, f"SAM {self.teacher} checkpoint (--sam_checkpoint)",
                            "Download it from https://github.com/facebookresearch/segment-anything#model-checkpoints.")

    def check_dataset(self, data_dir: str) -> None:
        """The dataset's datalist holds the splits and label budgets this configuration asks for."""
        datalist = os.path.join(data_dir, "datalist.json")
        read_datalist_info(datalist)
        load_datalist(datalist, "training", limit=self.labels or None)
        validation_items(datalist, self.val_labels)

    def output_folder(self) -> str:
        return check_writable(self.out, "--out")

    def dataset_folder(self, out: str) -> str:
        """``data_dir``, or the demo prepared under ``out/data``; a folder of unlabelled images is checked against
        its validation and test splits once it is known."""
        data_dir = self.data_dir
        if data_dir is None:
            if self.dataset != "demo":
                raise TskdError(f"--data_dir is required for dataset '{self.dataset}' (a folder with datalist.json; "
                                "make one with tskd-prepare).")
            data_dir = os.path.join(out, "data")
            if not os.path.isfile(os.path.join(data_dir, "datalist.json")):
                print("=== preparing the demo dataset (MNI152 brain MRI from nilearn)", flush=True)
                prepare_demo(data_dir)
        data_dir = os.path.abspath(data_dir)
        if self.transfer_source == "unlabelled" and self.unlabelled_dir and self.method not in ("scratch", "imagenet_mae"):
            check_unlabelled_folder(os.path.join(data_dir, "datalist.json"), self.unlabelled_dir)
        return data_dir

    def base_overrides(self, data_dir: str) -> dict:
        """What every stage of a run shares: data, seed, and the image size and validation budget when given."""
        return {"dataset_dir": data_dir, "seed": self.seed, **({"image_size": self.image_size} if self.image_size else {}),
                **({"val_labels": self.val_labels} if self.val_labels is not None else {})}

    def foundation_overrides(self) -> dict:
        foundation = {"teacher": self.teacher}
        if self.sam_checkpoint:
            foundation["sam_checkpoint"] = os.path.abspath(self.sam_checkpoint)
        return foundation

    def label_count(self, data_dir: str) -> str:
        """The masks a run uses, e.g. "5 labels (+ 5 for validation)": the validation masks beside the budget."""
        datalist = os.path.join(data_dir, "datalist.json")
        train = len(load_datalist(datalist, "training", limit=self.labels or None))
        val = len(validation_items(datalist, self.val_labels))
        return f"{train} labels" + (f" (+ {val} for validation)" if val else " (no validation)")


def prepared_image_size(dataset: str, data_dir: str) -> int:
    """The side ``data_dir`` was prepared at (its datalist's ``image_size``) where the dataset's bundles would
    resize it to another side of their own (DRIVE's are 512: a set prepared at 128 would train at 512, 16x the
    pixels); 0 where they agree, where the datalist records none, or where the bundles read it themselves
    (``folder``). An ``--image_size`` given on the command line is used instead of this."""
    from common.pipeline.bundles import bundle_properties

    size = read_datalist_info(os.path.join(data_dir, "datalist.json")).get("image_size")
    if not isinstance(size, int) or isinstance(size, bool):
        return 0
    default = bundle_properties(dataset, "teacher", {"dataset_dir": data_dir}).image_size
    if size == default:
        return 0
    print(f"image size: {data_dir} was prepared at {size}x{size} (its datalist.json); the {dataset} bundles' own "
          f"size is {default}, so every stage runs at {size} (--image_size chooses another)", flush=True)
    return size


def imagenet_mae_heads(checkpoint: str, num_heads: int) -> int:
    """The head count of the ImageNet-MAE student: as given, else as the checkpoint records; one clear error
    when the checkpoint is missing or records nothing and none was given."""
    load_state_file(checkpoint, "ImageNet-MAE ViT-Tiny checkpoint (--imagenet_mae_checkpoint)", MAE_LITE_HINT)
    recorded = checkpoint_num_heads(checkpoint)
    if num_heads and recorded and num_heads != recorded:
        raise TskdError(f"'{checkpoint}' records {recorded} attention heads, but --num_heads is {num_heads}.")
    if not (num_heads or recorded):
        raise TskdError(f"'{checkpoint}' does not record how many attention heads its ViT-Tiny uses: give --num_heads "
                        "(MAE-lite's ViT-Tiny uses 12; weights of 3 and 12 heads have the same shapes but compute "
                        "different functions).")
    return num_heads or recorded
