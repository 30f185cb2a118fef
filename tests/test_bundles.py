"""Every bundle: train 1 epoch -> evaluate -> inference, on real MRI, in process through MONAI's bundle workflow
API as tskd-run runs them, and through `python -m monai.bundle run` where the command line itself is tested."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, skip_or_fail
from common.engines import read_training_record

BUNDLES = sorted(d for d in os.listdir(os.path.join(ROOT, "bundles")) if not d.startswith("_")
                 and os.path.isdir(os.path.join(ROOT, "bundles", d)))
# Segmentation bundles of the demo (the synth bundle has its own test; the other datasets' bundles are in
# test_dataset_bundles.py).
# demo_reference trains, evaluates and infers in test_comparison.py's grid.
DEMO = [b for b in BUNDLES if b.startswith("demo_") and b not in ("demo_synth", "demo_reference")]
SCHEMA = os.path.join(SHARED, "zoo", "meta_schema_20240725.json")


def bundle_run(bundle, configs, *args, cwd=None):
    files = [os.path.join(ROOT, "bundles", bundle, "configs", c) for c in configs]
    config = files[0] if len(files) == 1 else str(files)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or ROOT, timeout=900)


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_bundles_are_generated_from_the_template():
    assert DEMO == ["demo_pretrain", "demo_student", "demo_teacher"]
    assert "demo_reference" in BUNDLES
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_bundles.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_file_set_and_metadata_schema(bundle):
    root = os.path.join(ROOT, "bundles", bundle)
    for rel in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "configs/evaluate.json",
                "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt",
                "LICENSE", "large_files.yml"):
        assert os.path.isfile(os.path.join(root, rel)), rel
    if not os.path.isfile(SCHEMA):
        skip_or_fail(f"model-zoo schema copy not found at {SCHEMA}")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=os.path.join(root, "configs", "metadata.json"), filepath=SCHEMA)


@pytest.fixture(scope="module")
def pretrain_inputs(demo_small, tmp_path_factory):
    """A transfer set and a (LoRA + decoder) teacher checkpoint at 64², as the teacher bundle writes it."""
    import torch

    from common.data import make_transfer_set
    from common.models import TrainableState, build_teacher

    folder = tmp_path_factory.mktemp("pretrain_inputs")
    make_transfer_set(os.path.join(demo_small, "datalist.json"), str(folder / "transfer"), size=6, seed=0)
    torch.save(TrainableState(build_teacher("litemedsam", image_size=64, num_classes=3)).state_dict(),
               folder / "teacher.pt")
    return {"transfer_file": str(folder / "transfer" / "datalist.json"),
            "teacher_checkpoint": str(folder / "teacher.pt")}


@pytest.mark.parametrize("bundle", DEMO)
def test_bundle_train_evaluate_infer(bundle, demo_small, tmp_path, pretrain_inputs, run_stage):
    """train -> evaluate -> inference of each bundle, in process as tskd-run runs it (`python -m monai.bundle run`
    itself: the killed-run, no-validation and bad-input tests)."""

    def run(configs, root, of=bundle, **overrides):
        return run_stage(of, configs, root, dataset_dir=demo_small, image_size=64, **overrides)

    common = {"batch_size": 2}
    tracking = {"tracking": "mlflow"} if bundle.endswith("student") else {}
    extra = pretrain_inputs if bundle.endswith("pretrain") else {}
    log = run(("train",), tmp_path, epochs=1, **common, **tracking, **extra)
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_epoch=1.pt").is_file()
    if bundle.endswith("pretrain"):
        assert "teacher cache written" in log and (tmp_path / "teacher_cache" / "manifest.json").is_file()
        import torch

        state = torch.load(models / "model.pt", weights_only=True)
        assert not any(k.startswith("proj.") for k in state) and any(k.startswith("head.") for k in state)
        student = run(("train",), tmp_path / "student", "demo_student", epochs=1,
                      encoder_checkpoint=str(models / "model.pt"))
        assert "val_mean_dice" in student
    else:
        assert "val_mean_dice" in log
    if bundle.endswith("teacher"):
        assert (models / "model_merged.pt").is_file()
        assert (models / "model.pt").stat().st_size < (models / "model_merged.pt").stat().st_size / 2
    elif bundle.endswith("student"):
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
        runs = mlflow.search_runs(search_all_experiments=True)
        assert len(runs) >= 1 and "metrics.train_loss" in runs.columns

    run(("train", "evaluate"), tmp_path, **common)
    report = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert set(report["per_class"]) == {"grey_matter", "white_matter"}
    assert 0.0 <= report["mean_dice"] <= 1.0 and report["mean_hd95"] > 0 and report["images"] > 0

    run(("inference",), tmp_path)
    test_items = json.load(open(os.path.join(demo_small, "datalist.json")))["test"]
    predictions = sorted(os.listdir(tmp_path / "eval" / "predictions"))
    assert len(predictions) == len(test_items)
    import nibabel as nib
    import numpy as np

    seg = np.asarray(nib.load(str(tmp_path / "eval" / "predictions" / predictions[0])).dataobj)
    assert seg.shape == (64, 64) and set(np.unique(seg)) <= {0, 1, 2}
    if bundle.endswith("student"):
        # Label maps written by inference, scored as another tool's predictions are, give the evaluation's report.
        from common.data import read_prediction
        from common.engines import score_label_maps

        labels = [nib.load(os.path.join(demo_small, item["label"])) for item in test_items]
        pairs = [(read_prediction(str(tmp_path / "eval" / "predictions"), item["image"]), np.asarray(label.dataobj))
                 for item, label in zip(test_items, labels)]
        scored = score_label_maps(pairs, ["background", "grey_matter", "white_matter"],
                                  spacing=labels[0].header.get_zooms()[:2])
        for key in ("mean_dice", "mean_hd95", "mean_iou"):
            assert scored[key] == pytest.approx(report[key], abs=1e-5), key
        assert scored["per_class"]["white_matter"]["images"] == report["per_class"]["white_matter"]["images"]


def test_student_training_resumes(demo_small, tmp_path, run_stage):
    """Resuming, refusing a checkpoint of other settings, skipping a cut-short checkpoint and starting a finished run
    anew; each run in process as tskd-run runs it, its log read from the captured output."""
    from common.errors import TskdError

    def run(**overrides):
        """(finished, the run's log or its one-line error)."""
        try:
            return True, run_stage("demo_student", ("train",), tmp_path, dataset_dir=demo_small, image_size=64,
                                   batch_size=4, **overrides)
        except TskdError as e:
            return False, e.message

    models = tmp_path / "models"
    assert run(epochs=2)[0]
    # A run stopped after epoch 1 of 2 (its epoch-2 checkpoint is not there) resumes at epoch 2.
    (models / "checkpoint_epoch=2.pt").unlink()
    finished, log = run(epochs=2)
    assert finished and "resuming from" in log and "checkpoint_epoch=1.pt" in log
    assert "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log.split("resuming from")[1].split("SupervisedEvaluator")[0]
    assert (models / "checkpoint_epoch=2.pt").is_file()
    # Other settings in the same folder: refused with advice, never "resumed" into a run that trains nothing.
    (models / "checkpoint_epoch=2.pt").rename(tmp_path / "finished.pt")
    finished, message = run(epochs=2, learning_rate=0.001)
    assert not finished and "other settings (learning_rate differ)" in message and "--resume false" in message
    finished, message = run(epochs=2, labels=2)
    assert not finished and "data, labels differ" in message
    # The epoch count is a setting: ignite would otherwise restore the old count and ignore the new one.
    finished, message = run(epochs=3)
    assert not finished and "max_epochs differ" in message
    # A checkpoint cut short by a crash is skipped; the previous one is resumed.
    (models / "checkpoint_epoch=2.pt").write_bytes((tmp_path / "finished.pt").read_bytes()[:1000])
    finished, log = run(epochs=2)
    assert finished and "skipping the unreadable checkpoint" in log and "resuming from" in log
    assert "checkpoint_epoch=1.pt" in log
    # A finished run is never resumed into a run that trains nothing: the same command (or MONAI Label's
    # /train) trains a new run with the epoch count it is given.
    finished, log = run(epochs=1)
    assert finished and "ends a finished run; starting a new run of 1 epochs" in log and "Epoch[1] Complete" in log
    assert sorted(p.name for p in models.glob("checkpoint*")) == ["checkpoint_epoch=1.pt"]
    finished, log = run(epochs=1, resume=False)
    assert finished and "handlers - INFO - resuming from" not in log
    assert sorted(p.name for p in models.glob("checkpoint*")) == ["checkpoint_epoch=1.pt"]


def test_a_killed_run_resumes_to_the_same_weights(demo_small, tmp_path):
    """SIGKILL in epoch 3 of 4, resume: the weights equal an uninterrupted run's, bit for bit."""
    import signal
    import time

    import torch

    def command(root, epochs=4):
        files = os.path.join(ROOT, "bundles", "demo_student", "configs", "train.json")
        return [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--dataset_dir", demo_small,
                "--bundle_root", str(root), "--image_size", "64", "--batch_size", "2", "--epochs", str(epochs)]

    from common.pipeline.bundles import run_bundle

    # The uninterrupted run in process (as tskd-run runs it), the killed and resumed one on the command line.
    run_bundle("demo", "student", ("train",), str(tmp_path / "whole"),
               {"dataset_dir": demo_small, "image_size": 64, "batch_size": 2, "epochs": 4})
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "models" / "checkpoint_epoch=2.pt").is_file() and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 3
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "models" / "checkpoint_epoch=4.pt").exists()
    resumed = ok(subprocess.run(command(killed), capture_output=True, text=True, cwd=ROOT, timeout=900))
    assert "resuming from" in resumed.stdout + resumed.stderr
    a = torch.load(tmp_path / "whole" / "models" / "checkpoint_epoch=4.pt", weights_only=True)["model"]
    b = torch.load(killed / "models" / "checkpoint_epoch=4.pt", weights_only=True)["model"]
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ after resuming, e.g. {different[:3]}"
    # What selects the model survives the kill: the same best model and the same record of where it was.
    best_a = torch.load(tmp_path / "whole" / "models" / "model.pt", weights_only=True)
    best_b = torch.load(killed / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert read_training_record(str(tmp_path / "whole")) == read_training_record(str(killed))


def _overrides(args: list[str]) -> dict:
    """``["--key", "value", ...]`` as the bundle command line reads them (numbers as numbers)."""
    import ast

    out = {}
    for key, value in zip(args[::2], args[1::2]):
        try:
            out[key[2:]] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key[2:]] = value
    return out


def test_bundle_bad_input_corpus(demo_small, tmp_path):
    """Each bad setting or file: one TskdError whose one line names it, from the bundle run in process as tskd-run
    runs it (the command line's `tskd error:` line for the same errors: test_bad_input_gives_one_clear_error)."""
    import shutil

    import nibabel as nib
    import numpy as np
    import torch

    from common.errors import TskdError
    from common.pipeline.bundles import run_bundle

    common = ["--dataset_dir", demo_small, "--image_size", "64", "--batch_size", "2", "--epochs", "1"]
    trained = tmp_path / "trained"
    run_bundle("demo", "student", ("train",), str(trained), _overrides(common))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "code": shutil.rmtree}, pickled)
    wrong = tmp_path / "wrong.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, wrong)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    nan_data = tmp_path / "nan_data"
    shutil.copytree(demo_small, nan_data)
    first = json.load(open(nan_data / "datalist.json"))["training"][0]["image"]
    image = nib.load(str(nan_data / first))
    array = np.asarray(image.dataobj, np.float32).copy()
    array[3, 3] = np.nan
    nib.save(nib.Nifti1Image(array, image.affine), str(nan_data / first))
    evaluate = ["train.json", "evaluate.json"]
    cases = {
        "epochs 0": (["train.json"], ["--epochs", "0"], ["epochs must be at least 1"]),
        "batch_size 0": (["train.json"], ["--batch_size", "0"], ["batch_size must be at least 1"]),
        "image_size 100": (["train.json"], ["--image_size", "100"], ["image_size", "multiple of 16"]),
        "labels -1": (["train.json"], ["--labels", "-1"], ["labels must be 0"]),
        "0-byte checkpoint": (evaluate, ["--ckpt_path", str(empty)], ["empty.pt", "could not be read"]),
        "pickle-bearing checkpoint": (evaluate, ["--ckpt_path", str(pickled)], ["pickled.pt"]),
        "wrong architecture": (evaluate, ["--ckpt_path", str(wrong)], ["wrong.pt", "does not fit the model"]),
        "unwritable bundle_root": (["train.json"], ["--bundle_root", str(a_file / "sub")], ["cannot write to bundle_root",
                                                                                           "a_file"]),
        "NaN in an image": (["train.json"], ["--dataset_dir", str(nan_data)], [first.split("/")[-1], "NaN"]),
    }
    failures = []
    for name, (configs, args, fragments) in cases.items():
        overrides = _overrides(common + args)
        root = overrides.pop("bundle_root", str(trained if configs == evaluate else tmp_path / name.replace(" ", "_")))
        before = sorted(os.listdir(demo_small))
        problems = []
        try:
            run_bundle("demo", "student", tuple(c[:-len(".json")] for c in configs), root, overrides)
            problems.append("no error")
        except TskdError as e:
            if "\n" in e.message or e.__cause__ is not None:
                problems.append("not one message: " + e.message[-1500:])
            problems += [f"'{f}' not named" for f in fragments if f not in e.message]
        if sorted(os.listdir(demo_small)) != before:
            problems.append("the dataset folder changed")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


def test_bad_input_gives_one_clear_error(demo_small, tmp_path):
    missing_sam = bundle_run("demo_teacher", ["train.json"], "--teacher", "vit_b", "--sam_checkpoint",
                             str(tmp_path / "sam_vit_b_01ec64.pth"), "--dataset_dir", demo_small,
                             "--bundle_root", str(tmp_path), "--epochs", "1")
    assert missing_sam.returncode != 0
    assert "tskd error: SAM vit_b checkpoint not found" in missing_sam.stderr
    assert "sam_vit_b_01ec64.pth" in missing_sam.stderr and "Traceback" not in missing_sam.stderr
    no_data = bundle_run("demo_student", ["train.json"], "--dataset_dir", str(tmp_path / "nowhere"),
                         "--bundle_root", str(tmp_path), "--epochs", "1")
    assert no_data.returncode != 0 and "tskd error: datalist not found" in no_data.stderr
    assert "Traceback" not in no_data.stderr
    untrained = bundle_run("demo_student", ["inference.json"], "--dataset_dir", demo_small,
                           "--bundle_root", str(tmp_path / "empty"))
    assert untrained.returncode != 0 and "tskd error: trained model not found" in untrained.stderr


def test_synth_bundle_trains_samples_evaluates_and_infers(demo_small, tmp_path):
    from common.data import make_transfer_set
    from common.pipeline.bundles import run_bundle

    make_transfer_set(os.path.join(demo_small, "datalist.json"), str(tmp_path / "augmented"), size=4)
    common = {"dataset_dir": demo_small, "image_size": 32, "denoiser_width": 16}

    def run(configs, **overrides):
        run_bundle("demo", "synth", configs, str(tmp_path), {**common, **overrides})

    run(("train",), epochs=1, batch_size=2, augmented_file=str(tmp_path / "augmented" / "datalist.json"))
    assert (tmp_path / "models" / "model.pt").is_file()
    run(("train", "sample"), batch_size=2, n_samples=3, sample_steps=2)
    synthetic = tmp_path / "synthetic"
    manifest = json.load(open(synthetic / "manifest.json"))
    assert manifest["count"] == 3 and manifest["steps"] == 2 and manifest["sampler"] == "ddim"
    assert len(json.load(open(synthetic / "quality.json"))["per_image"]) == 3 and (synthetic / "samples.png").is_file()
    os.remove(synthetic / "quality.json")
    run(("train", "evaluate"), batch_size=2)
    assert (synthetic / "quality.json").is_file()
    run(("inference",), n_samples=2, sample_steps=2)
    assert json.load(open(synthetic / "manifest.json"))["count"] == 2


def test_training_without_a_validation_split_keeps_the_last_epoch(demo_small, tmp_path):
    """``prepare_data.py --val_fraction 0``: every labelled image trains; model.pt is the last epoch's."""
    import shutil

    import torch

    data = tmp_path / "data"
    shutil.copytree(demo_small, data)
    info = json.load(open(data / "datalist.json"))
    info["training"] += info.pop("validation")
    info["validation"] = []
    (data / "datalist.json").write_text(json.dumps(info))
    run = ok(bundle_run("demo_student", ["train.json"], "--dataset_dir", str(data), "--bundle_root", str(tmp_path / "b"),
                        "--image_size", "64", "--batch_size", "4", "--epochs", "2"))
    assert "SupervisedEvaluator" not in run.stdout + run.stderr  # no validation ran
    final = torch.load(tmp_path / "b" / "models" / "model.pt", weights_only=True)
    last = torch.load(tmp_path / "b" / "models" / "checkpoint_epoch=2.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], last[k]) for k in last)


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if not b.endswith("_synth")])
def test_every_segmentation_bundle_is_servable_by_monai_label(bundle):
    """What MONAI Label's monaibundle app reads (inference.json alone, metadata's first input/output) is there,
    and the postprocessing left once it strips SaveImaged ends in a 2D integer mask (the demo student and
    teacher are served by a real server in test_monailabel.py / by hand)."""
    import torch
    from monai.bundle import ConfigParser

    root = os.path.join(ROOT, "bundles", bundle, "configs")
    meta = json.load(open(os.path.join(root, "metadata.json")))
    image = next(iter(meta["network_data_format"]["inputs"].values()))
    pred = next(iter(meta["network_data_format"]["outputs"].values()))
    assert len(image["spatial_shape"]) == 2 and pred["channel_def"]["0"] == "background"
    parser = ConfigParser()
    parser.read_config(os.path.join(root, "inference.json"))
    if bundle.startswith("folder"):  # its classes and size come from the user's datalist at run time
        parser.update({"image_size": 64, "in_channels": 1, "class_names": ["background", "lesion"]})
    for key in ("network_def", "preprocessing", "postprocessing", "inferer"):
        assert key in parser.config, key
    post = [t for t in parser.config["postprocessing"]["transforms"] if t["_target_"] != "SaveImaged"]
    assert [t["_target_"] for t in post[-2:]] == ["SqueezeDimd", "CastToTyped"]
    tail = parser.get_parsed_content("postprocessing").transforms[-2:]
    out = tail[1](tail[0]({"pred": torch.randint(0, 3, (1, 16, 16)).float()}))["pred"]
    assert out.shape == (16, 16) and out.dtype == torch.uint8


def test_amp_trains_a_bundle_in_bf16_on_the_cpu(demo_small, tmp_path, run_stage):
    """The bundles' default (``amp`` true) on a machine without CUDA: the student trains under bf16 autocast
    (not silently in fp32, and without MONAI's CUDA autocast warning) and evaluates; its weights load into the
    plain network. ``--amp false`` trains in fp32."""
    import json

    import torch

    from common.engines import cpu_bf16_native

    if not cpu_bf16_native():
        skip_or_fail("this CPU has no bf16 instructions: amp trains in fp32 here (test_student checks that)")
    log = run_stage("demo_student", ("train",), tmp_path, dataset_dir=demo_small, image_size=64, batch_size=4,
                    steps=2, epoch_length=1)
    assert "CUDA is not available" not in log and "autocast" not in log.lower(), log[-2000:]
    recipe = json.loads((tmp_path / "models" / "recipe.json").read_text())
    assert recipe["settings"]["amp"] is True and recipe["precision"] == "bf16 autocast (CPU)", recipe
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("net.") for k in state) and all(v.dtype == torch.float32 for v in state.values()
                                                                 if v.is_floating_point())
    run_stage("demo_student", ("train", "evaluate"), tmp_path, dataset_dir=demo_small, image_size=64)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["mean_dice"] >= 0
    fp32 = tmp_path / "fp32"
    run_stage("demo_student", ("train",), fp32, dataset_dir=demo_small, image_size=64, batch_size=4, steps=1,
              epoch_length=1, amp=False)
    assert json.loads((fp32 / "models" / "recipe.json").read_text())["precision"] == "fp32"
