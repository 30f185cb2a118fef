import json
import os

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from common.data import ValidateSampled, block_split, class_names, load_datalist
from common.errors import DataError


def test_block_split_leaves_no_neighbour_across_splits():
    splits = block_split(60, block=5, fractions=(0.2, 0.1), gap=1, seed=0)
    kept = [(i, s) for i, s in enumerate(splits) if s]
    assert {s for _, s in kept} == {"training", "validation", "test"}
    for (i, a), (j, b) in zip(kept, kept[1:]):
        assert a == b or j - i >= 2, f"slices {i} ({a}) and {j} ({b}) are neighbours"
    assert splits == block_split(60, block=5, fractions=(0.2, 0.1), gap=1, seed=0)  # stable
    assert splits != block_split(60, block=5, fractions=(0.2, 0.1), gap=1, seed=1)


def test_demo_slices_are_real_mri_with_three_classes_and_spacing(demo_small):
    datalist = os.path.join(demo_small, "datalist.json")
    assert class_names(datalist) == ["background", "grey_matter", "white_matter"]
    items = load_datalist(datalist, "training")
    assert items and load_datalist(datalist, "test") and load_datalist(datalist, "validation")
    img = nib.load(items[0]["image"])
    lab = np.asarray(nib.load(items[0]["label"]).dataobj)
    assert img.shape == lab.shape == (64, 64)
    assert img.header.get_zooms()[0] == pytest.approx(233 / 64, rel=1e-3)  # 233 mm field of view on 64 px
    assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).any() and (lab == 2).any()
    t1 = np.asarray(img.dataobj)
    assert t1[lab == 2].mean() > t1[lab == 1].mean()  # T1: white matter brighter than grey
    slices = {s: [x["slice"] for x in json.load(open(datalist))[s]] for s in ("training", "validation", "test")}
    assert not set(slices["training"]) & set(slices["test"])
    assert len(load_datalist(datalist, "training", limit=2)) == 2


def test_datalist_errors_name_the_problem(tmp_path, demo_small):
    with pytest.raises(DataError, match="datalist not found"):
        load_datalist(str(tmp_path / "none.json"))
    info = json.load(open(os.path.join(demo_small, "datalist.json")))
    info["validation"] = []
    info["training"] = [{k: os.path.join(demo_small, v) if k in ("image", "label") else v for k, v in item.items()}
                        for item in info["training"]]
    info["training"][0]["image"] = "images/gone_1.nii.gz"
    info["training"][1]["label"] = "labels/gone_2.nii.gz"
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(info))
    with pytest.raises(DataError, match="has no 'validation' items"):
        load_datalist(str(path), "validation")
    with pytest.raises(DataError, match=r"(?s)2 file\(s\).*gone_1.nii.gz.*gone_2.nii.gz"):
        load_datalist(str(path), "training")
    with pytest.raises(DataError, match="budget of 999"):
        load_datalist(os.path.join(demo_small, "datalist.json"), "training", limit=999)


def test_validate_sample_rejects_size_mismatch_and_unknown_labels(tmp_path):
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 6), np.uint8), affine), tmp_path / "small_mask.nii.gz")
    bad = np.zeros((8, 8), np.uint8)
    bad[0, 0] = 7
    nib.save(nib.Nifti1Image(bad, affine), tmp_path / "bad_mask.nii.gz")
    load = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"])])
    check = ValidateSampled(("image", "label"), num_classes=3)
    with pytest.raises(DataError, match=r"small_mask.nii.gz' is \(8, 6\)"):
        check(load({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "small_mask.nii.gz")}))
    with pytest.raises(DataError, match=r"bad_mask.nii.gz' holds label values \[7\]"):
        check(load({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "bad_mask.nii.gz")}))
