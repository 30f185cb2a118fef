"""Every dataset x stage bundle parses, validates, and trains one epoch on fixture data shaped like its
dataset (converted from a tiny tree in the dataset's distribution layout)."""

import json
import os

import pytest
import torch
from monai.bundle import run as bundle_run

from common.data import make_transfer_set, prepare_dataset
from common.models import TrainableState, build_teacher
from conftest import ROOT, SHARED, skip_or_fail
from dataset_trees import make_chaos, make_drive, make_kidneyus, make_pairs, make_ph2

TREES = {
    "kidneyus": make_kidneyus,
    "autooral": make_pairs,
    "chaos": make_chaos,
    "ph2": make_ph2,
    "drive": make_drive,
    "folder": lambda root: make_pairs(root, mask_dir="labels", values=[1, 2], ext="png"),
}
STAGES = ["synth", "teacher", "pretrain", "student"]
SIZE = 64
SCHEMA = os.path.join(SHARED, "zoo", "meta_schema_20240725.json")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for name, make in TREES.items():
        src = make(str(root / f"src_{name}"))
        out[name] = str(root / name)
        prepare_dataset(name, src, out[name], image_size=SIZE, val_fraction=0.2)
    return out


def test_every_dataset_has_its_bundles():
    present = {d for d in os.listdir(os.path.join(ROOT, "bundles")) if not d.startswith("_")}
    assert {f"{d}_{s}" for d in TREES for s in STAGES} <= present


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("dataset", sorted(TREES))
def test_bundle_trains_one_epoch_on_its_data(dataset, stage, converted, tmp_path):
    configs = os.path.join(ROOT, "bundles", f"{dataset}_{stage}", "configs")
    if not os.path.isfile(SCHEMA):
        skip_or_fail(f"model-zoo schema copy not found at {SCHEMA}")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=os.path.join(configs, "metadata.json"), filepath=SCHEMA)
    train = json.load(open(os.path.join(configs, "train.json")))
    info = json.load(open(os.path.join(converted[dataset], "datalist.json")))
    overrides = {"bundle_root": str(tmp_path), "dataset_dir": converted[dataset], "epochs": 1, "image_size": SIZE,
                 "batch_size": 2, "device": "$torch.device('cpu')"}
    if stage == "synth":
        make_transfer_set(os.path.join(converted[dataset], "datalist.json"), str(tmp_path / "augmented"), size=4)
        overrides.update(augmented_file=str(tmp_path / "augmented" / "datalist.json"), denoiser_width=16)
    if stage == "pretrain":
        make_transfer_set(os.path.join(converted[dataset], "datalist.json"), str(tmp_path / "transfer"), size=4)
        teacher = build_teacher("litemedsam", image_size=SIZE, num_classes=len(info["labels"]),
                                lora_rank=train["lora_rank"])
        torch.save(TrainableState(teacher).state_dict(), tmp_path / "teacher.pt")
        overrides.update(transfer_file=str(tmp_path / "transfer" / "datalist.json"),
                         teacher_checkpoint=str(tmp_path / "teacher.pt"))
    bundle_run(config_file=os.path.join(configs, "train.json"), meta_file=os.path.join(configs, "metadata.json"),
               logging_file=os.path.join(configs, "logging.conf"), **overrides)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").is_file()
    if isinstance(train["class_names"], list):  # fixed classes must match what the converter wrote
        assert train["class_names"] == [info["labels"][k] for k in sorted(info["labels"], key=int)]
        assert train["in_channels"] == info["channels"]
