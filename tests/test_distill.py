import json
import math
import os

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureTyped, Resized, ScaleIntensityRangePercentilesd, ScaleIntensityd

from common.data import LoadImage2Dd, load_datalist, make_transfer_set
from common.engines import CachedTeacherDataset, DistillationTrainer, TeacherCache
from common.errors import TskdError
from common.losses import TaskSpecificKDLoss, align_grid
from common.models import DistillationStudent, build_teacher, build_vit_fpn
from conftest import ROOT


def test_tskd_loss_by_hand():
    student_logits = torch.zeros(1, 2, 4, 4)
    teacher_logits = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), -1.0)])[None]  # constant maps
    student_hidden = torch.ones(1, 3, 2, 2)
    teacher_hidden = torch.full((1, 3, 4, 4), 3.0)  # finer grid: area-averaged onto the student's
    out = TaskSpecificKDLoss(w_logit=0.2, w_hidden=0.1)(student_logits, student_hidden, teacher_logits, teacher_hidden)
    assert out["logit"].item() == pytest.approx(1.0)  # ((0-1)^2 + (0+1)^2) / 2
    assert out["hidden"].item() == pytest.approx(4.0)  # (1-3)^2
    assert out["loss"].item() == pytest.approx(0.2 * 1.0 + 0.1 * 4.0)
    # Soft-target cross-entropy: uniform student over 2 classes -> -sum p log(1/2) = log 2 for any teacher.
    ce = TaskSpecificKDLoss(w_logit=1.0, w_hidden=0.0, logit_loss="ce")(student_logits, None, teacher_logits, None)
    assert ce["loss"].item() == pytest.approx(math.log(2)) and ce["hidden"].item() == 0
    # Not interpolated: the student's 4x4 map is average-pooled onto the teacher's 2x2.
    s = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 2, 1, 1)
    pooled = torch.tensor([[2.5, 4.5], [10.5, 12.5]])
    expected = ((pooled - 1) ** 2).mean() / 2 + ((pooled + 1) ** 2).mean() / 2
    none = TaskSpecificKDLoss(w_logit=1.0, w_hidden=0.0, logit_matching="none")(s, None, teacher_logits, None)
    assert none["loss"].item() == pytest.approx(expected.item())
    # Last mask channel removed: only channel 0 compared.
    drop = TaskSpecificKDLoss(w_logit=1.0, w_hidden=0.0, logit_matching="drop_last")(student_logits, None, teacher_logits, None)
    assert drop["loss"].item() == pytest.approx(1.0)
    assert align_grid(torch.ones(1, 1, 2, 2), (4, 4)).shape == (1, 1, 4, 4)


@pytest.fixture(scope="module")
def transfer(demo_small, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("transfer") / "t")
    make_transfer_set(os.path.join(demo_small, "datalist.json"), out, size=6, labels=2, seed=0)
    return out


def kd_transform(size=64, normalise=None):
    normalise = normalise or ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True)
    return Compose([LoadImage2Dd("image"), normalise, Resized("image", (size, size), mode="area"),
                    EnsureTyped("image", dtype=torch.float32)])


def test_transfer_set_is_seeded_and_holds_the_originals_first(demo_small, transfer, tmp_path):
    info = json.load(open(os.path.join(transfer, "datalist.json")))
    budget = [os.path.basename(d["image"]) for d in load_datalist(os.path.join(demo_small, "datalist.json"), limit=2)]
    assert len(info["training"]) == 6
    assert [d["source"] for d in info["training"]] == budget * 3  # only the 2-label budget's images
    again = make_transfer_set(os.path.join(demo_small, "datalist.json"), str(tmp_path / "again"), size=6, labels=2,
                              seed=0)
    import nibabel as nib

    last = info["training"][-1]["image"]
    a = np.asarray(nib.load(os.path.join(transfer, last)).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "again" / again["training"][-1]["image"])).dataobj)
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_teacher("litemedsam", image_size=64, num_classes=3, lora_rank=2).eval()


def test_cached_and_online_losses_agree(transfer, teacher, tmp_path):
    data = load_datalist(os.path.join(transfer, "datalist.json"), "training")
    cache = TeacherCache(str(tmp_path / "cache"), teacher, data, kd_transform(), image_size=64, batch_size=4)
    manifest = cache.manifest()
    assert manifest["dtype"] == "float16" and manifest["logits_shape"][0] == 6
    loaded = np.load(str(tmp_path / "cache" / "hidden.npy"), mmap_mode="r")
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float16
    torch.manual_seed(1)
    student = DistillationStudent(build_vit_fpn(64, 1, 3)).eval()
    loss = TaskSpecificKDLoss()
    items = [CachedTeacherDataset(cache)[i] for i in range(3)]
    images = torch.stack([i["image"] for i in items])
    trainer = DistillationTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=student,
                                  optimizer=torch.optim.Adam(student.parameters()), loss_function=loss, teacher=teacher)
    cached = trainer.teacher_outputs({"teacher_logits": torch.stack([i["teacher_logits"] for i in items]),
                                      "teacher_hidden": torch.stack([i["teacher_hidden"] for i in items])}, images)
    online = trainer.teacher_outputs({}, images)
    with torch.no_grad():
        out = student(images)
        a = loss(out["logits"], out["hidden"], cached["low_res_logits"], cached["hidden"])["loss"]
        b = loss(out["logits"], out["hidden"], online["low_res_logits"], online["hidden"])["loss"]
    assert a.item() == pytest.approx(b.item(), rel=2e-3)


def test_stale_cache_is_rebuilt_or_refused(transfer, teacher, tmp_path, caplog):
    data = load_datalist(os.path.join(transfer, "datalist.json"), "training")
    folder = str(tmp_path / "cache")
    first = TeacherCache(folder, teacher, data, kd_transform(), image_size=64)
    mtime = os.path.getmtime(os.path.join(folder, "logits.npy"))
    TeacherCache(folder, teacher, data, kd_transform(), image_size=64, on_stale="error")  # same inputs: reused
    assert os.path.getmtime(os.path.join(folder, "logits.npy")) == mtime
    other = build_teacher("litemedsam", image_size=64, num_classes=3, lora_rank=2)
    with torch.no_grad():
        other.mask_decoder.mask_tokens.weight.add_(0.1)
    with pytest.raises(TskdError, match="teacher weights differ"):
        TeacherCache(folder, other, data, kd_transform(), image_size=64, on_stale="error")
    rebuilt = TeacherCache(folder, other, data, kd_transform(), image_size=64)
    assert rebuilt.manifest()["key"] != first.key and "stale" in caplog.text
    with pytest.raises(TskdError, match="transfer-set images differ"):
        TeacherCache(folder, other, data[:4], kd_transform(), image_size=64, on_stale="error")
    # Same teacher, files and size, another intensity normalisation: the teacher saw other inputs.
    with pytest.raises(TskdError, match="preprocessing"):
        TeacherCache(folder, other, data, kd_transform(normalise=ScaleIntensityd("image")), image_size=64,
                     on_stale="error")


def test_online_teacher_runs_on_the_trainer_device(teacher):
    """``kd_augment: true`` runs the teacher online: it must be where the student and the batches are."""
    student = DistillationStudent(build_vit_fpn(64, 1, 3))
    moved = build_teacher("litemedsam", image_size=64, num_classes=3, lora_rank=2)
    DistillationTrainer(device=torch.device("meta"), max_epochs=1, train_data_loader=[], network=student,
                        optimizer=torch.optim.Adam(student.parameters()), loss_function=TaskSpecificKDLoss(),
                        teacher=moved)
    assert {p.device.type for p in moved.parameters()} == {"meta"}


@pytest.mark.parametrize("row", [f"tskd{i}" for i in range(1, 9)])
def test_every_ablation_override_runs_one_step(row, transfer, teacher, tmp_path_factory):
    from common.models import TrainableState
    from monai.bundle import ConfigParser

    shared = tmp_path_factory.getbasetemp() / "ablation"
    ckpt = shared / "teacher.pt"
    if not ckpt.is_file():
        shared.mkdir(exist_ok=True)
        torch.save(TrainableState(teacher).state_dict(), ckpt)
    configs = os.path.join(ROOT, "bundles", "demo_pretrain", "configs")
    parser = ConfigParser()
    parser.read_config([os.path.join(configs, "train.json"), os.path.join(configs, f"{row}.json")])
    overrides = json.load(open(os.path.join(configs, f"{row}.json")))
    parser.update({"bundle_root": str(shared / row), "cache_dir": str(shared / "cache"), "image_size": 64,
                   "batch_size": 3, "epochs": 1, "transfer_file": os.path.join(transfer, "datalist.json"),
                   "teacher_checkpoint": str(ckpt), "lora_rank": 2, "device": "$torch.device('cpu')",
                   "dataset_dir": str(shared)})
    loss = parser.get_parsed_content("loss")
    assert (loss.w_logit, loss.w_hidden, loss.logit_loss, loss.logit_matching) == \
        (overrides["w_logit"], overrides["w_hidden"], overrides["logit_loss"], overrides["logit_matching"])
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert math.isfinite(trainer.state.output[0]["loss"] if isinstance(trainer.state.output, list)
                         else trainer.state.output["loss"])
    assert trainer.state.iteration == 2
