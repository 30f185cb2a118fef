import json
import os

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

import torch

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
    info["allow_external_paths"] = True  # absolute paths into the demo folder, on purpose
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
    with pytest.raises(DataError, match="budget of 999.*--val_fraction 0"):
        load_datalist(os.path.join(demo_small, "datalist.json"), "training", limit=999)
    with pytest.raises(DataError, match="labels must be 0"):
        load_datalist(os.path.join(demo_small, "datalist.json"), "training", limit=-1)
    assert load_datalist(str(path), "validation", allow_empty=True) == []


def test_datalist_entries_must_stay_in_the_dataset_folder(tmp_path, demo_small):
    info = json.load(open(os.path.join(demo_small, "datalist.json")))
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(b"not yours")
    folder = tmp_path / "data"
    folder.mkdir()
    for entry in ("../secret.nii.gz", str(secret), "images/../../secret.nii.gz"):
        info["training"][0]["image"] = entry
        (folder / "datalist.json").write_text(json.dumps(info))
        with pytest.raises(DataError, match="outside the dataset folder"):
            load_datalist(str(folder / "datalist.json"), "training")


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


def _rgb_folder(root, n=6, size=32):
    """An RGB dataset like the one that exposed the bug: purple background, a red disk per image."""
    from dataset_trees import save

    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        image = np.empty((size, size, 3), np.uint8)
        image[:] = (138, 79, 156)
        disk = (yy - 10 - i) ** 2 + (xx - 16) ** 2 < 36
        image[disk] = (220, 20, 20)
        save(f"{root}/images/c{i}.png", image)
        save(f"{root}/labels/c{i}.png", disk.astype(np.uint8) * 255)
    return root


def test_rgb_transfer_set_keeps_colours_and_content(tmp_path):
    from common.data import make_transfer_set, prepare_dataset

    src = _rgb_folder(str(tmp_path / "src"))
    prepare_dataset("folder", src, str(tmp_path / "data"), image_size=32, classes="disk=255", val_fraction=0)
    info = make_transfer_set(str(tmp_path / "data" / "datalist.json"), str(tmp_path / "t"), size=20, seed=0)
    originals = len(load_datalist(str(tmp_path / "data" / "datalist.json"), "training"))
    for item in info["training"][originals:]:
        view = np.asarray(nib.load(str(tmp_path / "t" / item["image"])).dataobj)
        assert view.shape == (32, 32, 3)
        centre = view[8:24, 8:24].reshape(-1, 3)  # away from the zero padding of the borders
        background = centre[(np.abs(centre - (138, 79, 156)).sum(1) < 30)]
        assert len(background) > 0.4 * len(centre), "the background colour is gone"
        assert (np.abs(centre - (220, 20, 20)).sum(1) < 60).any(), "the red disk is gone"
        assert (view == 0).all(-1).mean() < 0.25  # zeros only where padding came in


def test_augmentation_translates_by_the_configured_fraction_of_the_side():
    from common.data import random_affine

    size, fraction = 64, 0.25
    image = torch.zeros(1, size, size)
    image[0, 28:36, 28:36] = 1.0
    shift = random_affine("image", size, prob=1.0, rotate=0.0, scale=0.0, translate=fraction, mode="nearest")
    shift.set_random_state(seed=0)
    moves = []
    for _ in range(40):
        out = torch.as_tensor(shift({"image": image.clone()})["image"])[0]
        rows, cols = torch.nonzero(out > 0.5, as_tuple=True)
        moves.append((abs(rows.float().mean().item() - 31.5), abs(cols.float().mean().item() - 31.5)))
    limit = fraction * size
    assert all(r <= limit + 0.5 and c <= limit + 0.5 for r, c in moves)
    assert max(r for r, _ in moves) > 0.6 * limit and max(c for _, c in moves) > 0.6 * limit  # both axes, in pixels
    scale = random_affine("image", size, prob=1.0, rotate=0.0, scale=0.3, translate=0.0, mode="nearest")
    scale.set_random_state(seed=1)
    heights, widths = [], []
    for _ in range(30):
        out = torch.as_tensor(scale({"image": image.clone()})["image"])[0] > 0.5
        heights.append(int(out.any(1).sum()))
        widths.append(int(out.any(0).sum()))
    assert len(set(heights)) > 2 and len(set(widths)) > 2  # scaling reaches both axes, not the rows only


def test_load_image_2d_gives_channel_first_and_names_misfits(tmp_path):
    from common.data import LoadImage2Dd

    nib.save(nib.Nifti1Image(np.zeros((8, 6, 3), np.float32), np.eye(4)), tmp_path / "rgb.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 6), np.float32), np.eye(4)), tmp_path / "grey.nii.gz")
    assert LoadImage2Dd("image", in_channels=3)({"image": str(tmp_path / "rgb.nii.gz")})["image"].shape == (3, 8, 6)
    assert LoadImage2Dd("image")({"image": str(tmp_path / "grey.nii.gz")})["image"].shape == (1, 8, 6)
    with pytest.raises(DataError, match="grey.nii.gz.*3-channel"):
        LoadImage2Dd("image", in_channels=3)({"image": str(tmp_path / "grey.nii.gz")})
    with pytest.raises(DataError, match="rgb.nii.gz.*2D single-channel"):
        LoadImage2Dd("image", in_channels=1)({"image": str(tmp_path / "rgb.nii.gz")})


def test_errors_with_empty_messages_are_still_one_clear_line(tmp_path):
    import subprocess
    import sys

    from common.errors import TskdError, first_line
    from common.models import load_state_file

    assert first_line(ValueError()) == "ValueError" and first_line(OSError("a\nb")) == "a"
    bad = tmp_path / "empty.pt"
    bad.write_bytes(b"")
    with pytest.raises(TskdError, match="empty.pt' could not be read"):
        load_state_file(str(bad), "trained model")
    # The hook itself, on an error whose message is empty.
    code = "import common; common.install_excepthook(); raise common.TskdError('')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and "tskd error: TskdError" in result.stderr and "Traceback" not in result.stderr


def test_unlabelled_transfer_set_from_beyond_the_budget_or_a_folder(demo_small, tmp_path):
    from PIL import Image

    from common.data import load_datalist, make_transfer_set
    from common.errors import DataError

    datalist = os.path.join(demo_small, "datalist.json")
    training = [os.path.basename(d["image"]) for d in load_datalist(datalist, "training")]
    info = make_transfer_set(datalist, str(tmp_path / "beyond"), size=6, labels=2, seed=0, source="unlabelled")
    assert len(info["training"]) == 6 and info["images"] == "unlabelled"
    assert {t["source"] for t in info["training"]} <= set(training[2:])  # never one of the labelled two
    assert all(set(t) == {"image", "source"} for t in json.load(open(tmp_path / "beyond" / "datalist.json"))["training"])
    with pytest.raises(DataError, match="needs images without labels"):
        make_transfer_set(datalist, str(tmp_path / "none"), size=4, labels=0, source="unlabelled")

    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):  # colour photographs of another size: made grey and resized to the dataset's side
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"s{i}.png")
    (folder / "notes.txt").write_text("not an image")
    info = make_transfer_set(datalist, str(tmp_path / "folder"), size=5, seed=0, source="unlabelled",
                             unlabelled_dir=str(folder))
    assert [t["source"] for t in info["training"]] == ["s0.png", "s1.png", "s2.png", "s0.png", "s1.png"]
    first = nib.load(str(tmp_path / "folder" / info["training"][0]["image"]))
    assert first.shape == (64, 64)
    with pytest.raises(DataError, match="holds no images"):
        (tmp_path / "no_images").mkdir()
        make_transfer_set(datalist, str(tmp_path / "empty"), size=2, source="unlabelled",
                          unlabelled_dir=str(tmp_path / "no_images"))


def test_an_unlabelled_folder_holding_a_held_out_image_is_refused_by_content(demo_small, tmp_path):
    """A test image saved under another name, format and size is still that image: refused before any stage;
    other images pass."""
    from PIL import Image

    from common.data import check_unlabelled_folder, load_datalist
    from common.data.convert import read_image
    from common.errors import DataError

    datalist = os.path.join(demo_small, "datalist.json")
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50), dtype=np.uint8)).save(folder / f"s{i}.png")
    assert check_unlabelled_folder(datalist, str(folder)) == 3
    test_image = load_datalist(datalist, "test")[1]["image"]
    array = read_image(test_image)[0]
    scaled = (255 * (array - array.min()) / (array.max() - array.min())).astype(np.uint8)
    Image.fromarray(scaled).resize((100, 100), Image.BILINEAR).save(folder / "scan_7.png")
    with pytest.raises(DataError, match=r"scan_7.png' in --unlabelled_dir is the test image .* leak the test split"):
        check_unlabelled_folder(datalist, str(folder))
