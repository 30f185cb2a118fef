"""MAE and MoCo v3 pre-training of the student's ViT-Tiny (the paper's self-supervised baselines)."""

import json
import math
import os

import pytest
import torch

from conftest import ROOT
from common.models import MaskedAutoencoder, MoCoV3, build_vit_fpn, contrastive_loss, mae_loss, random_masking


def test_random_masking_keeps_a_quarter_chosen_by_the_noise():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    keep, mask, restore = random_masking(2, 8, 0.75, noise)
    assert keep.tolist() == [[1, 5], [0, 1]]  # the two smallest noise values of each row
    assert mask.tolist() == [[1, 0, 1, 1, 1, 0, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]
    shuffled = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(shuffled, 1, restore), torch.arange(8).expand(2, -1))


def test_mae_loss_counts_masked_patches_only_with_normalised_pixels():
    pred = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    target = torch.zeros(1, 2, 2)
    mask = torch.tensor([[1.0, 0.0]])
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(1.0)  # patch 1 is visible
    # A target patch [1, 3]: mean 2, unbiased variance 2 -> [-1, 1] / sqrt(2); a zero prediction costs 1/2.
    target = torch.tensor([[[1.0, 3.0], [5.0, 5.0]]])
    got = mae_loss(torch.zeros(1, 2, 2), target, mask, norm_pix=True).item()
    assert got == pytest.approx(1 / (2 + 1e-6))


def test_mae_masks_three_quarters_and_trains_encoder_and_decoder():
    torch.manual_seed(0)
    student = build_vit_fpn(64, 1, 2)
    mae = MaskedAutoencoder(student.encoder)
    out = mae(torch.rand(2, 1, 64, 64))
    assert out["mask"].shape == (2, 16) and out["mask"].sum(dim=1).tolist() == [12.0, 12.0]
    assert out["pred"].shape == (2, 16, 16 * 16) and math.isfinite(out["loss"].item())
    out["loss"].backward()
    missing = [n for n, p in mae.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # The student shares the trained encoder: its keys are what the fine-tuning stage loads.
    assert mae.encoder is student.encoder


def test_mae_reconstruction_target_is_the_image_in_patches():
    mae = MaskedAutoencoder(build_vit_fpn(32, 1, 2).encoder)
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32)
    patches = mae.patchify(x)
    assert patches.shape == (1, 4, 256)
    assert torch.equal(patches[0, 1], x[0, 0, :16, 16:].reshape(-1))  # second patch: top right


def test_moco_contrastive_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits [[5, 0], [0, 5]] at tau 0.2: cross-entropy log(1 + e^-5) per row, scaled by 2 tau.
    assert contrastive_loss(q, q.clone(), 0.2).item() == pytest.approx(0.4 * math.log(1 + math.exp(-5)), rel=1e-5)
    swapped = contrastive_loss(q, q.flip(0), 0.2).item()
    assert swapped == pytest.approx(0.4 * math.log(1 + math.exp(5)), rel=1e-5)


def test_moco_momentum_update_and_gradients():
    torch.manual_seed(0)
    moco = MoCoV3(build_vit_fpn(32, 1, 2).encoder, dim=16, hidden=32, momentum=0.9)
    online = moco.encoder.patch_embed.proj.weight
    key = moco.momentum_encoder.patch_embed.proj.weight
    with torch.no_grad():
        online.add_(1.0)
    before_key, before_online = key.detach().clone(), online.detach().clone()
    moco.momentum_update()
    assert torch.allclose(key, 0.9 * before_key + 0.1 * before_online)
    loss = moco(torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32))["loss"]
    loss.backward()
    assert all(p.grad is None for p in moco.momentum_encoder.parameters())
    assert moco.encoder.patch_embed.proj.weight.grad is not None and moco.predictor[0].weight.grad is not None


@pytest.mark.parametrize("method", ["mae", "mocov3"])
def test_pretrain_bundle_runs_the_baseline_and_saves_a_student(method, tmp_path):
    from monai.bundle import ConfigParser

    from common.data import make_transfer_set, prepare_demo
    from common.models import load_encoder_weights

    data = str(tmp_path / "data")
    prepare_demo(data, image_size=64, stride=12, block=2, gap=0)
    make_transfer_set(os.path.join(data, "datalist.json"), str(tmp_path / "transfer"), size=6, seed=0)
    configs = os.path.join(ROOT, "bundles", "demo_pretrain", "configs")
    parser = ConfigParser()
    parser.read_config([os.path.join(configs, "train.json"), os.path.join(configs, f"{method}.json")])
    parser.update({"bundle_root": str(tmp_path / "run"), "image_size": 64, "batch_size": 3, "epochs": 1,
                   "transfer_file": str(tmp_path / "transfer" / "datalist.json"), "device": "$torch.device('cpu')",
                   "dataset_dir": data})
    assert parser.get_parsed_content("method") == method
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert trainer.state.iteration == 2 and math.isfinite(trainer.state.output[0]["loss"])
    parser.get_parsed_content("finalize")  # rank 0 saves the student (models/model.pt)
    saved = str(tmp_path / "run" / "models" / "model.pt")
    student = build_vit_fpn(64, 1, 3)
    loaded = load_encoder_weights(student, saved)
    assert loaded and torch.equal(student.encoder.patch_embed.proj.weight,
                                  parser.get_parsed_content("student").encoder.patch_embed.proj.weight)
    assert json.load(open(os.path.join(configs, f"{method}.json")))["method"] == method


def test_moco_momentum_rises_from_its_start_to_one_on_a_cosine():
    moco = MoCoV3(build_vit_fpn(32, 1, 2).encoder, dim=16, hidden=32, momentum=0.99)
    assert [round(moco.momentum_at(p), 6) for p in (0.0, 0.5, 1.0)] == [0.99, 0.995, 1.0]
    fixed = MoCoV3(build_vit_fpn(32, 1, 2).encoder, dim=16, hidden=32, momentum=0.99, momentum_schedule="constant")
    assert fixed.momentum_at(0.7) == 0.99
    with pytest.raises(ValueError, match="momentum_schedule"):
        MoCoV3(build_vit_fpn(32, 1, 2).encoder, momentum_schedule="linear")


def test_contrastive_views_are_two_different_crops_of_the_image_at_its_size():
    from monai.transforms import Compose

    views = Compose([*__import__("common.data", fromlist=["x"]).contrastive_views("image", "image_2", 32)])
    views.set_random_state(seed=0)
    image = torch.linspace(0, 1, 64 * 64).reshape(1, 64, 64)
    out = views({"image": image})
    assert out["image"].shape == out["image_2"].shape == (1, 32, 32)
    assert not torch.allclose(torch.as_tensor(out["image"]), torch.as_tensor(out["image_2"]))


@pytest.mark.parametrize("method", ["mae", "mocov3"])
def test_the_pipeline_trains_each_baseline_with_its_own_recipe(method, tmp_path, demo_small):
    """What run_pipeline passes and the bundle's configs say, read back from the run's recipe record: MAE at
    batch 64 with AdamW (0.9, 0.95) and no weight decay on norms and biases, MoCo v3 at batch 32 with its
    momentum rising on a cosine (a command-line batch once beat both configs)."""
    from monai.bundle import ConfigParser

    from common.data import make_transfer_set
    from common.engines import read_recipe
    from common.pipeline import profiles

    make_transfer_set(os.path.join(demo_small, "datalist.json"), str(tmp_path / "transfer"), size=32, seed=0)
    recipe = profiles.pretrain_recipe(profiles.PROFILES["quick"], method)
    configs = os.path.join(ROOT, "bundles", "demo_pretrain", "configs")
    parser = ConfigParser()
    parser.read_config([os.path.join(configs, "train.json"), os.path.join(configs, f"{method}.json")])
    parser.update({**recipe, "steps": 1, "epoch_length": 1, "bundle_root": str(tmp_path / "run"), "image_size": 32,
                   "transfer_file": str(tmp_path / "transfer" / "datalist.json"), "dataset_dir": demo_small,
                   "device": "$torch.device('cpu')"})
    parser.get_parsed_content("train#trainer").run()
    record = read_recipe(str(tmp_path / "run"))
    groups = record["param_groups"]
    assert record["optimizer"] == "AdamW" and all(g["lr"] == pytest.approx(1.5e-4) for g in groups)
    if method == "mae":
        assert record["batch_size"] == 64
        assert [g["betas"] for g in groups] == [[0.9, 0.95]] * 2
        decayed, plain = sorted(groups, key=lambda g: -g["weight_decay"])
        assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
        # Every bias and norm weight (1-D) is in the group without decay; the matrices are decayed.
        mae = parser.get_parsed_content("network")
        one_d = sum(1 for p in mae.parameters() if p.requires_grad and p.ndim <= 1)
        assert plain["tensors"] == one_d and decayed["tensors"] == sum(1 for p in mae.parameters()
                                                                       if p.requires_grad) - one_d
    else:
        assert record["batch_size"] == 32 and record["drop_last"] is True
        assert [g["weight_decay"] for g in groups] == [0.1] and groups[0]["betas"] == [0.9, 0.999]
        assert record["settings"]["moco_momentum"] == 0.99 and record["settings"]["moco_momentum_schedule"] == "cosine"
