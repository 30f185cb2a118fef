"""The DynUNet reference's nnU-Net 2D recipe: network, deep-supervision loss, augmentation, bundle wiring."""

import json
import os

import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from monai.utils import set_determinism

from common.data import nnunet_augmentation
from common.losses import DeepSupervised
from common.models import build_dynunet, count_gflop, deep_supervision_heads, nnunet_2d_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_network_supervises_every_decoder_level_but_the_coarsest_and_infers_plainly():
    assert nnunet_2d_plan(128)["strides"] == [1, 2, 2, 2, 2, 2]  # 128 -> 4: five decoder levels
    assert deep_supervision_heads(128) == 3 and deep_supervision_heads(64) == 2
    net = build_dynunet(64, 1, 3)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(m.affine for m in norms)  # nnU-Net's instance norm learns scale and shift
    x = torch.rand(2, 1, 64, 64)
    assert net.train()(x).shape == (2, 3, 3, 64, 64)  # main output + 2 deeper levels, at the input size
    assert net.eval()(x).shape == (2, 3, 64, 64)
    plain = build_dynunet(64, 1, 3, deep_supervision=False).eval()
    # At inference only the heads' 1x1 convolutions run (MONAI computes them, then drops them): under 0.1 % of
    # the plain U-Net's GFLOP.
    with_heads, without = count_gflop(net, x[:1]), count_gflop(plain, x[:1])
    assert without < with_heads < without * 1.001


def test_deep_supervision_loss_weights_levels_by_halves_normalised():
    inner = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    loss = DeepSupervised(inner)
    assert loss.get_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    torch.manual_seed(0)
    outputs = torch.randn(2, 3, 3, 16, 16)
    target = torch.randint(0, 3, (2, 1, 16, 16)).float()
    expected = sum(w * inner(outputs[:, i], target) for i, w in enumerate([4 / 7, 2 / 7, 1 / 7]))
    assert loss(outputs, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(outputs[:, 0], target).item() == pytest.approx(inner(outputs[:, 0], target).item(), rel=1e-6)


def test_dice_is_over_the_foreground_and_the_batch():
    # Image 0 has a 16-pixel object, predicted exactly; image 1 a 4-pixel object, missed. Over the batch the
    # foreground Dice is 2*16 / (16 + 20): the sums run over both images, the background class is left out.
    # Per image it would be the mean of 1 and 0.
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    target[1, 0, 0:2, 0:2] = 1
    predicted = target.clone()
    predicted[1] = 0
    logits = torch.cat([1 - predicted, predicted], 1) * 50.0
    dice = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, lambda_ce=0.0)
    assert dice(logits, target).item() == pytest.approx(1 - 32 / 36, abs=1e-4)
    per_image = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, lambda_ce=0.0)
    assert per_image(logits, target).item() == pytest.approx(0.5, abs=1e-4)
    with_background = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_ce=0.0)
    assert with_background(logits, target).item() < dice(logits, target).item()  # background's easy Dice dilutes it


def test_augmentation_moves_the_mask_with_the_image_and_changes_only_image_intensities():
    set_determinism(seed=0)
    transforms = nnunet_augmentation(["image", "label"])
    for i, t in enumerate(transforms):  # MONAI's random transforms share one class-level state unless seeded
        t.set_random_state(seed=i)
    names = [type(t).__name__ for t in transforms]
    assert names == ["RandAffined", "RandAffined", "RandGaussianNoised", "RandGaussianSmoothd", "RandScaleIntensityd",
                     "RandScaleIntensityFixedMeand", "RandSimulateLowResolutiond", "RandAdjustContrastd",
                     "RandAdjustContrastd", "RandFlipd", "RandFlipd"]
    assert [t.prob for t in transforms] == [0.2, 0.2, 0.1, 0.2, 0.15, 0.15, 0.25, 0.1, 0.3, 0.5, 0.5]
    label = torch.zeros(1, 32, 32)
    label[0, 4:14, 6:20] = 1
    label[0, 18:30, 8:20] = 2  # wide enough that its interpolated rim is not half of it at scale 0.7
    spatial = transforms[:2] + transforms[-2:]
    changed = 0
    for _ in range(40):
        d = {"image": label.clone() / 2, "label": label.clone()}
        for t in spatial:
            d = t(d)
        image, mask = torch.as_tensor(d["image"]), torch.as_tensor(d["label"])
        assert set(mask.unique().tolist()) <= {0.0, 1.0, 2.0}  # nearest resampling keeps the classes
        # Where the mask says class 2 the image is bright (interpolated edges aside): they moved together.
        inside = image[mask == 2]
        assert inside.numel() == 0 or inside.median() > 0.75
        changed += not torch.equal(mask, label)
    assert changed > 20  # mirroring alone changes most draws
    d = {"image": label.clone() / 2, "label": label.clone()}
    for t in transforms[2:9]:
        t.prob = 1.0
        d = t(d)
    assert torch.equal(torch.as_tensor(d["label"]), label)
    assert not torch.allclose(torch.as_tensor(d["image"]), label / 2)


def test_reference_bundle_trains_with_the_recipe():
    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "bundles", "demo_reference", "configs", "train.json"))
    parser["bundle_root"] = "/tmp/unused"
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, DeepSupervised) and loss.loss.dice.batch and not loss.loss.dice.include_background
    augmentation = parser.get_parsed_content("train#augmentation")
    assert [type(t).__name__ for t in augmentation] == [type(t).__name__ for t in nnunet_augmentation()]
    net = parser.get_parsed_content("network_def")
    assert net.deep_supervision and net.deep_supr_num == deep_supervision_heads(parser["image_size"])
    settings = json.dumps(parser.config["run_settings"])
    assert "nnU-Net 2D" in settings


def test_the_reference_batch_follows_nnunets_five_percent_rule(demo_small):
    """A batch covers at most 5 % of the labelled images and holds at least 2 (nnU-Net planned 2 for the demo at 5,
    10 and 50 labels); the bundle takes it from the images it trains on, and an explicit --batch_size wins."""
    from common.models import nnunet_batch_size

    assert [nnunet_batch_size(n) for n in (1, 5, 50, 60, 100, 1000)] == [2, 2, 2, 3, 5, 6]
    assert nnunet_batch_size(1000, largest=64) == 50
    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "bundles", "demo_reference", "configs", "train.json"))
    parser.update({"dataset_dir": demo_small, "labels": 3})
    assert parser.get_parsed_content("batch_size") == 2
    parser.update({"batch_size": 6})
    assert parser.get_parsed_content("batch_size") == 6


def test_the_nnunet_comparison_writes_tskds_split_in_nnunets_layout_and_scores_like_an_evaluation(demo_small, tmp_path):
    """nnU-Net itself is not installed here (it is run by scripts/bench/nnunet_reference.py from an environment of
    its own); what tskd adds around it is: the split in nnU-Net's raw layout with fold 0 = tskd's validation split,
    the test split scored by tskd's metrics, and one line saying how to install nnU-Net when it is missing."""
    import nibabel as nib
    import numpy as np

    from common.data import load_datalist
    from common.errors import TskdError
    from common.pipeline.nnunet import find_nnunet, score_nnunet, write_nnunet_dataset

    facts = write_nnunet_dataset(demo_small, 3, str(tmp_path / "raw"), 901, "demo3")
    folder = tmp_path / "raw" / "Dataset901_demo3"
    datalist = os.path.join(demo_small, "datalist.json")
    train, val, test = (load_datalist(datalist, k) for k in ("training", "validation", "test"))
    assert facts["dataset"] == "Dataset901_demo3" and len(facts["split"]["train"]) == 3
    assert facts["split"]["val"] == [os.path.basename(i["image"]).split(".")[0] for i in val]
    assert sorted(os.listdir(folder / "labelsTr")) == sorted(f"{c}.nii.gz" for c in facts["split"]["train"] + facts["split"]["val"])
    assert len(os.listdir(folder / "imagesTs")) == len(test) and all(n.endswith("_0000.nii.gz") for n in os.listdir(folder / "imagesTs"))
    meta = json.load(open(folder / "dataset.json"))
    assert meta["labels"] == {"background": 0, "grey_matter": 1, "white_matter": 2} and meta["numTraining"] == 3 + len(val)
    source, copied = nib.load(train[0]["image"]), nib.load(folder / "imagesTr" / f"{facts['split']['train'][0]}_0000.nii.gz")
    assert np.array_equal(np.asarray(source.dataobj), np.asarray(copied.dataobj))
    assert np.allclose(source.affine, copied.affine)

    # Predictions equal to the ground truth score 1; one emptied white matter costs that image's white-matter Dice.
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for case, item in facts["test"].items():
        label = nib.load(item["label"])
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj), label.affine), str(predictions / f"{case}.nii.gz"))
    names = ["background", "grey_matter", "white_matter"]
    assert score_nnunet(str(predictions), facts["test"], names)["mean_dice"] == pytest.approx(1.0)
    case, item = next(iter(facts["test"].items()))
    label = np.asarray(nib.load(item["label"]).dataobj)
    nib.save(nib.Nifti1Image(np.where(label == 2, 0, label).astype(label.dtype), nib.load(item["label"]).affine),
             str(predictions / f"{case}.nii.gz"))
    report = score_nnunet(str(predictions), facts["test"], names)
    assert report["per_image"]["dice"][0] == [1.0, 0.0] and report["per_class"]["grey_matter"]["dice"] == pytest.approx(1.0)
    os.remove(predictions / f"{case}.nii.gz")
    with pytest.raises(TskdError, match=f"no prediction for test case {case}"):
        score_nnunet(str(predictions), facts["test"], names)
    with pytest.raises(TskdError, match="nnunetv2"):
        find_nnunet(str(tmp_path))


def test_mirror_inferer_averages_the_softmax_over_every_flip_of_the_spatial_axes():
    from common.engines import MirrorInferer

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    x = torch.randn(2, 1, 8, 6)
    by_hand = sum(torch.flip(torch.softmax(net(torch.flip(x, d) if d else x), 1), d) if d else torch.softmax(net(x), 1)
                  for d in ((), (2,), (3,), (2, 3))) / 4
    out = MirrorInferer()(x, net)
    assert out.shape == (2, 3, 8, 6) and torch.allclose(torch.softmax(out, 1), by_hand, atol=1e-6)
    # A flip of the input flips the mirrored prediction exactly (a plain network's would not).
    assert torch.allclose(MirrorInferer()(torch.flip(x, (3,)), net), torch.flip(out, (3,)), atol=1e-6)
    assert not torch.allclose(net(torch.flip(x, (3,))), torch.flip(net(x), (3,)), atol=1e-3)
