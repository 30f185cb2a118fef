import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.data import load_datalist, prepare_dataset
from common.errors import DataError
from dataset_trees import H, W, make_chaos, make_drive, make_kidneyus, make_pairs, make_ph2, rgb, save, stripe

SIZE = 32  # output side in the tests


def label_of(out, item):
    return np.asarray(nib.load(os.path.join(out, item["label"])).dataobj)


def stripe_classes(label):
    """Class found in each 4-row stripe k (k = 1..4) of the resized mask (rows scale by SIZE / H)."""
    rows = [int((4 * k + 2) * SIZE / H) for k in range(1, 5)]
    return [int(label[r, 2]) for r in rows]


def test_drive_keeps_its_test_set_fov_and_vessel_class(tmp_path):
    out = str(tmp_path / "out")
    info = prepare_dataset("drive", make_drive(str(tmp_path / "DRIVE")), out, image_size=SIZE)
    assert len(info["test"]) == 2 and len(info["training"]) + len(info["validation"]) == 4 and info["validation"]
    assert all(os.path.isfile(i["fov"]) for i in info["test"])
    assert stripe_classes(label_of(out, info["test"][0]))[0] == 1 and info["labels"] == {"0": "background", "1": "vessel"}
    image = nib.load(os.path.join(out, info["training"][0]["image"]))
    assert image.shape == (SIZE, SIZE, 3)
    assert info["budgets"] == []  # 5/10/20 exceed this tiny training split


def test_ph2_lesion_split_is_stable(tmp_path):
    src = make_ph2(str(tmp_path / "PH2Dataset"), n=10)
    a = prepare_dataset("ph2", src, str(tmp_path / "a"), image_size=SIZE)
    b = prepare_dataset("ph2", src, str(tmp_path / "b"), image_size=SIZE)
    c = prepare_dataset("ph2", src, str(tmp_path / "c"), image_size=SIZE, seed=1)
    key = lambda info: [[i["source"] for i in info[s]] for s in ("training", "validation", "test")]
    assert key(a) == key(b) and key(a) != key(c)
    assert stripe_classes(label_of(str(tmp_path / "a"), a["training"][0]))[0] == 1


def test_chaos_pairs_by_instance_number_maps_organs_and_keeps_spacing(tmp_path):
    out = str(tmp_path / "out")
    info = prepare_dataset("chaos", make_chaos(str(tmp_path / "CHAOS")), out, image_size=SIZE)
    items = info["training"] + info["validation"] + info["test"]
    assert len(items) == 9
    for item in items:
        k = int(item["image"].split("_")[-1][:3]) + 1  # the k-th slice by instance number
        image = np.asarray(nib.load(os.path.join(out, item["image"])).dataobj)
        assert image.mean() == pytest.approx(100 * k, rel=1e-3)  # the DICOM with InstanceNumber k
        assert stripe_classes(label_of(out, item))[:k + 1] == [1, 2, 3, 4][:k + 1]  # 63/126/189/252 -> 1..4
        assert item["spacing"] == pytest.approx([1.5 * H / SIZE, 1.5 * W / SIZE])
    patients = {s: {i["image"].split("_")[1] for i in info[s]} for s in ("training", "validation", "test")}
    assert not patients["training"] & patients["test"]  # whole patients per split


def test_kidneyus_regions_override_capsule(tmp_path):
    out = str(tmp_path / "out")
    info = prepare_dataset("kidneyus", make_kidneyus(str(tmp_path / "kidneyUS")), out, image_size=SIZE)
    assert list(info["labels"].values()) == ["background", "capsule", "central_echo_complex", "medulla", "cortex"]
    assert stripe_classes(label_of(out, info["training"][0])) == [1, 2, 3, 4]
    assert nib.load(os.path.join(out, info["training"][0]["image"])).shape == (SIZE, SIZE)


def test_autooral_and_folder_with_named_classes(tmp_path):
    out = str(tmp_path / "oral")
    info = prepare_dataset("autooral", make_pairs(str(tmp_path / "Autooral")), out, image_size=SIZE)
    assert stripe_classes(label_of(out, info["training"][0]))[0] == 1
    src = make_pairs(str(tmp_path / "mine"), mask_dir="labels", values=[3, 7], ext="png")
    info = prepare_dataset("folder", src, str(tmp_path / "folder"), image_size=SIZE, classes="cyst=3,tumour=7")
    assert list(info["labels"].values()) == ["background", "cyst", "tumour"]
    assert stripe_classes(label_of(str(tmp_path / "folder"), info["training"][0]))[:2] == [1, 2]
    detected = prepare_dataset("folder", src, str(tmp_path / "detected"), image_size=SIZE)
    assert list(detected["labels"].values()) == ["background", "class_3", "class_7"]
    # Budgets nest: the first N training items of any budget are the first N of a larger one.
    items = load_datalist(os.path.join(str(tmp_path / "folder"), "datalist.json"), "training")
    assert load_datalist(os.path.join(str(tmp_path / "folder"), "datalist.json"), "training", limit=2) == items[:2]


# The broken-input corpus: each kind must give one DataError naming every offending file, and leave the
# output folder exactly as it was.
def _broken(kind, root):
    src = make_pairs(root, mask_dir="labels", ext="png")
    if kind == "unreadable image":
        open(f"{src}/images/case01.png", "wb").write(b"not an image at all")
        open(f"{src}/images/case03.png", "wb").write(b"\x89PNG garbage")
        return ["case01.png", "case03.png"]
    if kind == "truncated image":
        data = open(f"{src}/images/case02.png", "rb").read()
        open(f"{src}/images/case02.png", "wb").write(data[: len(data) // 3])
        return ["case02.png"]
    if kind == "missing mask":
        os.remove(f"{src}/labels/case04.png")
        os.remove(f"{src}/labels/case05.png")
        return ["case04.png", "case05.png"]
    if kind == "size mismatch":
        save(f"{src}/labels/case00.png", np.zeros((H - 2, W), np.uint8))
        return ["case00.png"]
    if kind == "unknown label value":
        save(f"{src}/labels/case01.png", stripe([255, 9]))
        return ["case01.png", "[9]"]
    if kind == "colour mask":
        save(f"{src}/labels/case02.png", rgb(5))
        return ["case02.png", "colour"]
    if kind == "empty set":
        for f in os.listdir(f"{src}/images"):
            os.remove(f"{src}/images/{f}")
        return ["no image/mask pairs", "images/<name>"]
    if kind == "duplicate names":
        save(f"{src}/images/case00.jpg", rgb(1))
        return ["case00.jpg", "case00.png"]
    if kind == "3D volume as image":
        nib.save(nib.Nifti1Image(np.zeros((H, W, 5), np.float32), np.eye(4)), f"{src}/images/vol.nii.gz")
        save(f"{src}/labels/vol.png", stripe([255]))
        return ["vol.nii.gz", "2D image"]
    if kind == "NaN image":
        arr = np.zeros((H, W), np.float32)
        arr[0, 0] = np.nan
        nib.save(nib.Nifti1Image(arr, np.eye(4)), f"{src}/images/nan.nii.gz")
        save(f"{src}/labels/nan.png", stripe([255]))
        return ["nan.nii.gz", "NaN"]
    if kind == "non-integer mask":
        nib.save(nib.Nifti1Image(np.full((H, W), 0.5, np.float32), np.eye(4)), f"{src}/labels/case03.nii.gz")
        os.remove(f"{src}/labels/case03.png")
        return ["case03.nii.gz", "non-integer"]
    raise AssertionError(kind)


KINDS = ["unreadable image", "truncated image", "missing mask", "size mismatch", "unknown label value", "colour mask",
         "empty set", "duplicate names", "3D volume as image", "NaN image", "non-integer mask"]


@pytest.mark.parametrize("kind", KINDS)
def test_broken_inputs_give_one_clear_error_and_leave_the_output_untouched(kind, tmp_path):
    expected = _broken(kind, str(tmp_path / "src"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous dataset")
    with pytest.raises(DataError) as err:
        prepare_dataset("folder", str(tmp_path / "src"), str(out), image_size=SIZE, classes="lesion=255")
    for fragment in expected:
        assert fragment in err.value.message, err.value.message
    assert sorted(os.listdir(out)) == ["keep.txt"] and (out / "keep.txt").read_text() == "previous dataset"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out-")]  # no temporary folder left behind


def test_chaos_slice_count_mismatch_and_missing_source(tmp_path):
    src = make_chaos(str(tmp_path / "CHAOS"))
    os.remove(f"{src}/Train_Sets/MR/2/T2SPIR/Ground/liver_GT_002.png")
    with pytest.raises(DataError, match="patient 2: 3 DICOM slices but 2 Ground masks"):
        prepare_dataset("chaos", src, str(tmp_path / "out"), image_size=SIZE)
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset("ph2", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_prepare_data_cli_reports_errors_in_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    src = make_pairs(str(tmp_path / "src"), mask_dir="labels", ext="png")
    os.remove(f"{src}/labels/case04.png")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_data.py"), "folder", "--src", src,
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "prepare_data: 1 problem(s)" in result.stderr and "case04" in result.stderr


def test_palette_masks_are_read_as_label_indices(tmp_path):
    src = make_pairs(str(tmp_path / "voc"), mask_dir="labels", n=6, ext="png")
    for i in range(6):
        mask = Image.fromarray(stripe([1, 2]), mode="P")
        mask.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * (256 * 3 - 9))  # colours != indices
        mask.save(f"{src}/labels/case{i:02d}.png")
    info = prepare_dataset("folder", src, str(tmp_path / "out"), image_size=SIZE, classes="a=1,b=2")
    assert stripe_classes(label_of(str(tmp_path / "out"), info["training"][0]))[:2] == [1, 2]


def test_too_few_cases_for_the_splits(tmp_path):
    src = make_pairs(str(tmp_path / "two"), mask_dir="labels", n=2, ext="png")
    with pytest.raises(DataError, match="too few"):
        prepare_dataset("folder", src, str(tmp_path / "out"), image_size=SIZE, classes="lesion=255")
