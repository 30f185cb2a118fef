"""tskd's own MONAI Label app (scripts/monailabel_app) on a real server at 127.0.0.1, over a tiny trained tskd run:
both models listed, the student's 2D result with the image's own spacing and equal to the bundle's inference, the
next image chosen by teacher-student disagreement, and one-line 4xx answers for what does not exist."""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, monailabel_server, skip_or_fail


@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_small):
    import importlib.util

    if importlib.util.find_spec("monailabel") is None:
        skip_or_fail("monailabel is not installed (pip install -r requirements.txt)")

    from common.pipeline import cli

    work = tmp_path_factory.mktemp("tskd_app")
    run = work / "run"
    cli.run_main(["--profile", "smoke", "--data_dir", demo_small, "--image_size", "64", "--method", "tskd",
                  "--transfer_source", "augment", "--out", str(run)])
    data = Path(demo_small)
    datalist = json.load(open(data / "datalist.json"))
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for item in datalist["training"]:
        shutil.copy(data / item["image"], studies)
        shutil.copy(data / item["label"], studies / "labels" / "final" / os.path.basename(item["image"]))
    for item in datalist["test"]:
        shutil.copy(data / item["image"], studies)
    with monailabel_server(os.path.join(ROOT, "scripts", "monailabel_app"), str(studies), ["run", str(run)],
                           str(work)) as url:
        yield {"url": url, "run": run, "work": work, "data": data, "datalist": datalist}


def _infer(app, model: str, image_id: str) -> np.ndarray:
    import nibabel as nib
    import requests

    answer = requests.post(f"{app['url']}/infer/{model}", params={"image": image_id, "output": "image"},
                           files={"params": (None, json.dumps({"device": "cpu"}))}, timeout=300)
    assert answer.status_code == 200, answer.text[:2000]
    path = app["work"] / f"{model}_{image_id}.nii.gz"
    path.write_bytes(answer.content)
    return nib.load(str(path))


def _id(path: str) -> str:
    return os.path.basename(path).replace(".nii.gz", "")


def test_the_app_lists_both_models_and_the_strategies(app):
    import requests

    info = requests.get(f"{app['url']}/info/", timeout=30).json()
    assert {"student", "teacher"} <= set(info["models"])
    assert info["models"]["student"]["labels"] == {"grey_matter": 1, "white_matter": 2}
    assert {"disagreement", "tta", "random"} <= set(info["strategies"])
    assert "student" in info["trainers"]
    log = (app["work"] / "server.log").read_text()
    assert "Preload Network" in log  # the student is loaded when the server starts
    assert "serving 1x1x64x64 inputs with ONNX Runtime" in log  # and exported by the warm-up inference


def test_infer_returns_the_bundle_s_prediction_with_the_image_s_own_spacing(app):
    import nibabel as nib

    from common.pipeline.stages import infer_bundle

    image = app["datalist"]["test"][0]["image"]
    served = _infer(app, "student", _id(image))
    original = nib.load(str(app["data"] / image))
    assert np.allclose(served.affine, original.affine) and served.shape == original.shape
    assert not np.allclose(np.abs(np.diag(original.affine)[:2]), 1.0)  # the demo's slices are not 1 mm: kept
    folder = infer_bundle("demo", "student", str(app["run"] / "student_tskd"),
                          {"dataset_dir": str(app["data"]), "image_size": 64, "fpn": "skip", "seed": 1234,
                           "datalist": [{"image": str(app["data"] / image)}],
                           "output_dir": str(app["work"] / "own")})
    own = np.asarray(nib.load(os.path.join(folder, f"{_id(image)}_seg.nii.gz")).dataobj)
    assert np.array_equal(np.squeeze(np.asarray(served.dataobj)), np.squeeze(own))


def test_the_next_image_is_the_one_where_teacher_and_student_disagree_most(app):
    import requests

    from common.labelling.runs import disagreement

    answer = requests.post(f"{app['url']}/activelearning/disagreement", json={}, timeout=600)
    assert answer.status_code == 200, answer.text[:2000]
    chosen = answer.json()
    unlabelled = [_id(item["image"]) for item in app["datalist"]["test"]]
    assert set(chosen["scores"]) == set(unlabelled)
    # The same scores from the two models' own /infer answers: the chosen image is their argmax.
    expected = {i: disagreement(np.asarray(_infer(app, "student", i).dataobj), np.asarray(_infer(app, "teacher", i).dataobj))
                for i in unlabelled}
    assert chosen["scores"] == pytest.approx(expected, abs=1e-6)
    assert chosen["id"] == max(expected, key=expected.get)
    tta = requests.post(f"{app['url']}/activelearning/tta", json={}, timeout=600).json()
    assert tta["id"] in unlabelled and all(0.0 <= s <= 1.0 for s in tta["scores"].values())


def test_what_does_not_exist_gets_a_404_with_one_line(app):
    import requests

    image = _id(app["datalist"]["test"][0]["image"])
    cases = {"unknown image": ("/infer/student", {"image": "no_such_image"}, "no image 'no_such_image'"),
             "unknown model": ("/infer/nnunet", {"image": image}, "no model 'nnunet'"),
             "unknown strategy": ("/activelearning/cleverest", None, "no strategy 'cleverest'")}
    for name, (path, params, fragment) in cases.items():
        if params is None:
            answer = requests.post(app["url"] + path, json={}, timeout=60)
        else:
            answer = requests.post(app["url"] + path, params={**params, "output": "json"},
                                   files={"params": (None, json.dumps({"device": "cpu"}))}, timeout=60)
        detail = answer.json().get("detail", "") if answer.headers.get("content-type", "").startswith(
            "application/json") else answer.text
        assert answer.status_code == 404, f"{name}: {answer.status_code} {answer.text[:500]}"
        assert fragment in detail and "\n" not in detail, f"{name}: {detail!r}"


def test_train_serves_a_better_student_and_never_runs_two_rounds_at_once(app):
    """A /train round fine-tunes the student on the saved labels and swaps it in when it validates better than the
    served one (here the served student was zeroed, so it segments nothing). Two rounds asked at once both answer,
    one after the other: their training never overlaps, and the second, no better than the first, is not served."""
    import threading

    import requests
    import torch

    served = app["run"] / "monailabel" / "student" / "models" / "model.pt"
    zeroed = {k: torch.zeros_like(v) for k, v in torch.load(served, weights_only=True).items()}
    torch.save(zeroed, served)
    answers = []

    def train():
        answers.append(requests.post(f"{app['url']}/train/student", params={"run_sync": "true"},
                                     json={"profile": "smoke"}, timeout=900))

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.5)
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200, 200], [a.text[:500] for a in answers]
    rounds = [json.load(open(app["run"] / "monailabel" / "rounds" / str(i) / "round.json")) for i in (0, 1)]
    assert rounds[0]["finished"] <= rounds[1]["started"]  # one after the other
    first, second = rounds
    assert first["served_val_dice"] == 0.0 and first["labels"] == len(app["datalist"]["training"])
    assert first["new_val_dice"] > 0.0 and first["swapped"]
    # The first round's student is served: its validation Dice again (validation runs in fp32 whatever `amp` trains in).
    assert second["served_val_dice"] == pytest.approx(first["new_val_dice"])
    assert second["swapped"] == (second["new_val_dice"] > second["served_val_dice"])
    after = torch.load(served, weights_only=True)
    assert any(v.abs().sum() > 0 for v in after.values())
    # The swapped weights are exported again before ONNX Runtime serves them.
    exports = (app["work"] / "server.log").read_text().count("inputs with ONNX Runtime")
    _infer(app, "student", _id(app["datalist"]["test"][0]["image"]))
    assert (app["work"] / "server.log").read_text().count("inputs with ONNX Runtime") == exports + 1


def test_the_simulated_loop_adds_the_images_each_strategy_chooses(app, tmp_path):
    """One round of the simulated annotation loop per strategy on the app's run: each adds the images it ranks
    first (disagreement: those where the run's teacher and the fine-tuned student differ most), and the record
    keeps every round's test Dice per image."""
    from common.labelling.runs import run_overrides
    from common.labelling.simulate import simulate

    run = str(app["run"])
    overrides = run_overrides(os.path.join(run, "student_tskd"))
    record = simulate("demo", overrides["dataset_dir"], run, str(tmp_path / "loop"), overrides, "tskd",
                      seeds=(1234,), start=2, add=2, rounds=1, profile="smoke")
    training = [item["image"] for item in app["datalist"]["training"]]
    for strategy in ("disagreement", "tta", "random"):
        rounds = record[f"{strategy}_seed1234"]["rounds"]
        assert [r["labels"] for r in rounds] == [2, 4]
        assert rounds[1]["labelled"][:2] == [str(app["data"] / i) for i in training[:2]]
        assert all(0.0 <= r["mean_dice"] <= 1.0 and len(r["per_image_dice"]) == len(app["datalist"]["test"])
                   for r in rounds)
    assert record["disagreement_seed1234"]["rounds"][0] == record["random_seed1234"]["rounds"][0]  # shared round 0
    # A second call finds every round recorded and trains nothing.
    again = simulate("demo", overrides["dataset_dir"], run, str(tmp_path / "loop"), overrides, "tskd",
                     seeds=(1234,), start=2, add=2, rounds=1, profile="smoke")
    assert again == record
    # The report: the table, the labels each strategy needs to reach random's final Dice, the Holm-adjusted
    # tests, the Dice and picks plots.
    from common.labelling.simulate import write_report

    write_report(record, str(tmp_path / "loop"), ["disagreement", "tta", "random"], [1234])
    report = (tmp_path / "loop" / "loop.md").read_text()
    target = record["random_seed1234"]["rounds"][-1]["mean_dice"]
    for strategy in ("disagreement", "tta"):
        reached = [r["labels"] for r in record[f"{strategy}_seed1234"]["rounds"] if r["mean_dice"] >= target]
        assert (f"- {strategy}: {reached[0]} labels" if reached else f"- {strategy}: not reached in 4 labels") in report
        assert f"- {strategy} vs random: mean difference" in report and ", Holm " in report
    assert (tmp_path / "loop" / "dice_vs_labels.png").is_file() and (tmp_path / "loop" / "picks.png").is_file()
