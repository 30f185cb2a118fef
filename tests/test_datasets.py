import json
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
    # The field of view is written at the task size as the evaluation mask, inside the dataset folder.
    roi = np.asarray(nib.load(os.path.join(out, info["test"][0]["roi"])).dataobj)
    assert roi.shape == (SIZE, SIZE) and roi[:, 0].all() and not roi[:, -1].any()
    assert stripe_classes(label_of(out, info["test"][0]))[0] == 1 and info["labels"] == {"0": "background", "1": "vessel"}
    image = nib.load(os.path.join(out, info["training"][0]["image"]))
    assert image.shape == (SIZE, SIZE, 3)
    assert info["spacing_unit"] == "px"  # TIF/GIF carry no spacing: HD95 is in pixels


def test_drive_reaches_the_paper_budget_of_20_without_validation(tmp_path, capsys):
    src = make_drive(str(tmp_path / "DRIVE"), n_train=20, n_test=2)
    default = prepare_dataset("drive", src, str(tmp_path / "default"), image_size=SIZE)
    assert len(default["training"]) == 18 and default["budgets"] == [5, 10] and default["unreachable_budgets"] == [20]
    assert "budget(s) [20] cannot be reached" in capsys.readouterr().err  # said, not silently dropped
    with pytest.raises(DataError, match="only 18 'training' items.*--val_fraction 0"):
        load_datalist(os.path.join(str(tmp_path / "default"), "datalist.json"), "training", limit=20)
    every = prepare_dataset("drive", src, str(tmp_path / "all"), image_size=SIZE, val_fraction=0)
    assert len(every["training"]) == 20 and every["validation"] == [] and every["budgets"] == [5, 10, 20]
    assert len(load_datalist(os.path.join(str(tmp_path / "all"), "datalist.json"), "training", limit=20)) == 20


def test_synthetic_vessels_are_thin_and_read_as_drive(tmp_path):
    """``tskd-prepare vessels``: DRIVE's layout made here, converted by the DRIVE converter (field of view as the
    evaluation mask); the vessels are thin (most vessel pixels touch the background) and seeded."""
    from common.data.vessels import prepare_vessels, vessel_case
    from common.pipeline import cli

    cli.prepare_main(["vessels", "--out", str(tmp_path / "vessels"), "--image_size", "64", "--n_train", "6",
                      "--n_test", "2"])
    info = json.load(open(tmp_path / "vessels" / "datalist.json"))
    assert info["labels"] == {"0": "background", "1": "vessel"} and len(info["test"]) == 2
    assert len(info["training"]) + len(info["validation"]) == 6 and all("roi" in item for item in info["test"])
    image, mask, fov = vessel_case((128, 128), seed=3)
    assert image.shape == (128, 128, 3) and set(np.unique(mask)) == {0, 255} and not mask[fov == 0].any()
    vessel = mask > 0
    assert 0.03 < vessel[fov > 0].mean() < 0.3
    inner = vessel[1:-1, 1:-1] & vessel[:-2, 1:-1] & vessel[2:, 1:-1] & vessel[1:-1, :-2] & vessel[1:-1, 2:]
    assert inner.sum() < 0.5 * vessel.sum()  # thin: most vessel pixels have a background neighbour
    assert np.array_equal(vessel_case((128, 128), seed=3)[1], mask) and not np.array_equal(
        vessel_case((128, 128), seed=4)[1], mask)
    with pytest.raises(DataError):  # the converter's own checks apply
        prepare_vessels(str(tmp_path / "few"), image_size=64, n_train=1, n_test=1)


def test_folder_spacing_option_makes_hd95_millimetres(tmp_path):
    src = make_pairs(str(tmp_path / "mine"), mask_dir="labels", ext="png")
    info = prepare_dataset("folder", src, str(tmp_path / "out"), image_size=SIZE, classes="lesion=255",
                           spacing=(0.5, 0.25))
    assert info["spacing_unit"] == "mm"
    assert info["training"][0]["spacing"] == pytest.approx([0.5 * H / SIZE, 0.25 * W / SIZE])
    plain = prepare_dataset("folder", src, str(tmp_path / "plain"), image_size=SIZE, classes="lesion=255")
    assert plain["spacing_unit"] == "px"


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
    assert info["spacing_unit"] == "mm"  # DICOM carries its spacing
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


# The bad-input corpus of the converter, walked through the real command line (prepare_data.py's main):
# each case must exit non-zero with one message (no traceback) naming the offending file or setting, and
# change nothing outside the output folder -- the source tree stays byte-identical and a previous dataset
# in the output folder is kept as it was.
def _volume(src, shape):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), f"{src}/images/vol.nii.gz")
    save(f"{src}/labels/vol.png", stripe([255]))


def _jpeg_masks(src):
    for i in range(6):
        os.remove(f"{src}/labels/case{i:02d}.png")
        save(f"{src}/labels/case{i:02d}.jpg", stripe([255, 128]), quality=60)


def _broken(kind, src):
    """Break the fresh tree ``src`` (images/ + labels/); returns (message fragments, extra CLI arguments)."""
    named = ["--classes", "lesion=255"]
    if kind == "unreadable image":
        open(f"{src}/images/case01.png", "wb").write(b"not an image at all")
        open(f"{src}/images/case03.png", "wb").write(b"\x89PNG garbage")
        return ["case01.png", "case03.png"], named
    if kind == "truncated image":
        data = open(f"{src}/images/case02.png", "rb").read()
        open(f"{src}/images/case02.png", "wb").write(data[: len(data) // 3])
        return ["case02.png"], named
    if kind == "missing mask":
        os.remove(f"{src}/labels/case04.png")
        os.remove(f"{src}/labels/case05.png")
        return ["case04.png", "case05.png"], named
    if kind == "size mismatch":
        save(f"{src}/labels/case00.png", np.zeros((H - 2, W), np.uint8))
        return ["case00.png"], named
    if kind == "unknown label value":
        save(f"{src}/labels/case01.png", stripe([255, 9]))
        return ["case01.png", "[9]"], named
    if kind == "colour mask":
        save(f"{src}/labels/case02.png", rgb(5))
        return ["case02.png", "colour"], named
    if kind == "empty set":
        for f in os.listdir(f"{src}/images"):
            os.remove(f"{src}/images/{f}")
        return ["no image/mask pairs", "images/<name>"], named
    if kind == "duplicate names":
        save(f"{src}/images/case00.jpg", rgb(1))
        return ["case00.jpg", "case00.png"], named
    if kind == "3D volume as image":
        _volume(src, (H, W, 5))
        return ["vol.nii.gz", "2D image"], named
    if kind == "3-slice volume":  # would pass for an RGB image
        _volume(src, (H, W, 3))
        return ["vol.nii.gz", "volume", "slice"], named
    if kind == "3-slice 4D volume":
        _volume(src, (H, W, 1, 3))
        return ["vol.nii.gz", "volume"], named
    if kind == "NaN image":
        arr = np.zeros((H, W), np.float32)
        arr[0, 0] = np.nan
        nib.save(nib.Nifti1Image(arr, np.eye(4)), f"{src}/images/nan.nii.gz")
        save(f"{src}/labels/nan.png", stripe([255]))
        return ["nan.nii.gz", "NaN"], named
    if kind == "non-integer mask":
        nib.save(nib.Nifti1Image(np.full((H, W), 0.5, np.float32), np.eye(4)), f"{src}/labels/case03.nii.gz")
        os.remove(f"{src}/labels/case03.png")
        return ["case03.nii.gz", "non-integer"], named
    if kind == "lossy JPEG masks":
        _jpeg_masks(src)
        return ["lossy (JPEG)", "--classes", "case0"], []
    if kind == "all-background masks":
        for i in range(6):
            save(f"{src}/labels/case{i:02d}.png", np.zeros((H, W), np.uint8))
        return ["lesion", "background only"], named
    if kind == "image_size not a multiple of 16":
        return ["image_size", "multiple of 16", "100"], [*named, "--image_size", "100"]
    if kind == "image_size 0":
        return ["image_size", "multiple of 16"], [*named, "--image_size", "0"]
    if kind == "negative image_size":
        return ["image_size", "-32"], [*named, "--image_size", "-32"]
    if kind == "out is the source":
        return ["overlaps the source", "would delete"], [*named, "--out", src]
    if kind == "out inside the source":
        return ["overlaps the source"], [*named, "--out", f"{src}/images"]
    if kind == "out above the source":
        return ["overlaps the source"], [*named, "--out", os.path.dirname(src)]
    if kind == "out holds other files":
        os.makedirs(f"{src}/../mine", exist_ok=True)
        open(f"{src}/../mine/notes.txt", "w").write("my notes")
        return ["not written by tskd", "mine"], [*named, "--out", os.path.join(os.path.dirname(src), "mine")]
    raise AssertionError(kind)


KINDS = ["unreadable image", "truncated image", "missing mask", "size mismatch", "unknown label value", "colour mask",
         "empty set", "duplicate names", "3D volume as image", "3-slice volume", "3-slice 4D volume", "NaN image",
         "non-integer mask", "lossy JPEG masks", "all-background masks", "image_size not a multiple of 16",
         "image_size 0", "negative image_size", "out is the source", "out inside the source", "out above the source",
         "out holds other files"]


def tree_state(root):
    """Every file under ``root`` with its bytes' digest, and every folder."""
    import hashlib

    state = {}
    for folder, dirs, files in os.walk(root):
        state[os.path.relpath(folder, root)] = "dir"
        for f in files:
            path = os.path.join(folder, f)
            state[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return state


def prepare_cli(*argv):
    """prepare_data.py's main with ``argv``: (exit status, stderr text); SystemExit(str) prints to stderr."""
    import contextlib
    import io
    import runpy
    import sys

    from conftest import ROOT

    err = io.StringIO()
    old = sys.argv
    sys.argv = ["prepare_data.py", *argv]
    try:
        with contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, "scripts", "prepare_data.py"), run_name="__main__")
        return 0, err.getvalue()
    except SystemExit as e:
        if isinstance(e.code, str):
            return 1, err.getvalue() + e.code
        return e.code or 0, err.getvalue()
    finally:
        sys.argv = old


def test_bad_input_corpus_exit_status_message_and_nothing_else_changed(tmp_path):
    failures = []
    for k, kind in enumerate(KINDS):
        case = tmp_path / f"case{k}"
        src = make_pairs(str(case / "src"), mask_dir="labels", ext="png")
        out = str(case / "out")
        assert prepare_cli("folder", "--src", src, "--out", out, "--classes", "lesion=255",
                           "--image_size", str(SIZE))[0] == 0  # a previous dataset there
        expected, args = _broken(kind, src)
        if "--out" not in args:
            args = [*args, "--out", out]
        if "--image_size" not in args:
            args = [*args, "--image_size", str(SIZE)]
        before = tree_state(str(case))
        status, err = prepare_cli("folder", "--src", src, *args)
        message = [line for line in err.splitlines() if line.startswith("prepare_data:")]
        problems = []
        if status == 0:
            problems.append("exit status 0")
        if "Traceback" in err or len(message) != 1:
            problems.append(f"not one message: {err!r}")
        problems += [f"'{f}' not named" for f in expected if f not in err]
        if tree_state(str(case)) != before:
            problems.append("files changed")
        if problems:
            failures.append(f"{kind}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


def test_replacing_a_dataset_keeps_the_old_one_until_the_new_one_is_in(tmp_path, monkeypatch):
    from common.data import io as dataset_io

    src = make_pairs(str(tmp_path / "src"), mask_dir="labels", ext="png")
    out = str(tmp_path / "out")
    prepare_dataset("folder", src, out, image_size=SIZE, classes="lesion=255")
    before = tree_state(out)
    real_replace = os.replace

    def failing_replace(a, b):
        if os.path.basename(a).startswith(".out-") and "-old-" not in a:  # moving the new folder in
            raise OSError(30, "Read-only file system")
        return real_replace(a, b)

    monkeypatch.setattr(dataset_io.os, "replace", failing_replace)
    with pytest.raises(OSError):
        prepare_dataset("folder", src, out, image_size=SIZE, classes="lesion=255", seed=3)
    monkeypatch.undo()
    assert tree_state(out) == before  # the old dataset was put back
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []
    prepare_dataset("folder", src, out, image_size=SIZE, classes="lesion=255", seed=3)
    assert (os.stat(out).st_mode & 0o777) == (0o777 & ~_umask())  # the user's normal mode, not 0700


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_chaos_slice_count_mismatch_and_missing_source(tmp_path):
    src = make_chaos(str(tmp_path / "CHAOS"))
    os.remove(f"{src}/Train_Sets/MR/2/T2SPIR/Ground/liver_GT_002.png")
    with pytest.raises(DataError, match="patient 2: 3 DICOM slices but 2 Ground masks"):
        prepare_dataset("chaos", src, str(tmp_path / "out"), image_size=SIZE)
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset("ph2", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


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
