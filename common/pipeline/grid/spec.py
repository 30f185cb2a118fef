"""The grid's settings and what one cell of it runs."""

from __future__ import annotations

import dataclasses
import os

from common.errors import TskdError
from common.pipeline.config import RunConfig
from common.pipeline.profiles import METHODS
from common.provenance import read_json, write_json

__all__ = ["GridSpec", "FIXED", "cell_id", "check_grid_settings", "label_budgets"]

# Settings every cell depends on: a grid folder holds one value of each (methods, budgets, sizes and seeds may be
# extended between runs).
FIXED = ("dataset", "profile", "transfer_source", "unlabelled_dir", "seed", "image_size", "fpn", "teacher",
         "sam_checkpoint", "denoiser", "val_labels", "imagenet_mae_pos_embed", "shared_pretraining")
# What a grid folder written before a FIXED setting existed ran with (its grid.json does not name it).
LEGACY = {"shared_pretraining": True}


@dataclasses.dataclass
class GridSpec:
    """The comparison grid's settings (the command line's options, same names)."""

    dataset: str = "demo"
    data_dir: str | None = None
    methods: str = "scratch,mae,mocov3,takd,tskd"
    labels: str = "5,10,all"
    transfer: str = ""
    transfer_source: str | None = None
    unlabelled_dir: str = ""
    seeds: int = 3
    seed: int = 1234
    shared_pretraining: bool = False
    profile: str = "quick"
    no_reference: bool = False
    lora_ranks: str = ""
    teacher: str = "litemedsam"
    sam_checkpoint: str = ""
    imagenet_mae_checkpoint: str = ""
    num_heads: int = 0
    imagenet_mae_pos_embed: bool = False
    val_labels: int | None = None
    fpn: str = "skip"
    image_size: int = 0
    budget_scale: float | str = "auto"
    denoiser: str = "unet"
    tracking: str = "mlflow"
    qualitative: int = 4
    report_only: bool = False
    isolate_stages: bool = False
    workers: int = 1
    worker_threads: int = 0
    executor: str = "local"
    ray_address: str = ""
    out: str = "runs/grid"

    def method_list(self) -> list[str]:
        methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        for m in methods:
            if m not in METHODS:
                raise TskdError(f"--methods: unknown method '{m}' (choose from {', '.join(METHODS)}).")
        return methods

    def fixed(self) -> dict:
        return {k: getattr(self, k) for k in FIXED}

    def cell_config(self, method: str, labels: str, transfer: int, seed: int | None = None) -> RunConfig:
        """The run configuration of one cell: its transfer set and pre-training use ``seed`` (default the grid's
        first seed, which the teacher always uses)."""
        return RunConfig(
            dataset=self.dataset, data_dir=self.data_dir, method=method, profile=self.profile, transfer=transfer,
            transfer_source=self.transfer_source, unlabelled_dir=self.unlabelled_dir, denoiser=self.denoiser,
            labels=0 if labels == "all" else int(labels), teacher=self.teacher, sam_checkpoint=self.sam_checkpoint,
            fpn=self.fpn, imagenet_mae_checkpoint=self.imagenet_mae_checkpoint,
            num_heads=self.num_heads if method in ("imagenet_mae", "scratch") else 0,
            seed=self.seed if seed is None else seed,
            image_size=self.image_size, val_labels=self.val_labels, imagenet_mae_pos_embed=self.imagenet_mae_pos_embed,
            budget_scale=self.budget_scale, out=self.out)


def label_budgets(text: str) -> list[str]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) > 0:
            out.append(str(int(part)))
        else:
            raise TskdError(f"--labels: '{part}' is neither a positive number of images nor 'all'.")
    return out


def cell_id(method: str, labels: str, transfer: int, seed: int) -> str:
    return f"{method}_labels{labels}" + (f"_transfer{transfer}" if transfer else "") + f"_seed{seed}"


def check_grid_settings(out: str, spec: GridSpec) -> None:
    """A grid folder holds one value of each ``FIXED`` setting: the first run records them in ``grid.json``, a
    later run with another value is refused (its finished cells would be mixed with these)."""
    path = os.path.join(out, "grid.json")
    mine, saved = spec.fixed(), read_json(path)
    if saved:
        saved = {**LEGACY, **saved}
    differ = [f"--{k} {saved[k]!r} there, {mine[k]!r} now" for k in mine if k in saved and saved[k] != mine[k]]
    if differ:
        raise TskdError(f"'{out}' holds a grid run with other settings ({'; '.join(differ)}); its finished cells "
                        "would be mixed with these. Run with that folder's settings, or choose another --out.")
    if not saved and not spec.report_only:
        write_json(path, mine)
