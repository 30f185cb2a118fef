"""tskd's MONAI Label app (served from ``scripts/monailabel_app``; see its ``main.py`` for the command)."""

from __future__ import annotations

import logging
import os
import shutil

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

from common.labelling.infer import TskdInfer
from common.labelling.runs import run_overrides
from common.labelling.strategies import Disagreement, TTAUncertainty
from common.labelling.train import TskdStudentTrain
from common.pipeline.bundles import BUNDLES
from common.provenance import Artifact, file_sha256

__all__ = ["TskdApp", "assemble", "student_method"]

logger = logging.getLogger(__name__)


def assemble(run: str, dataset: str, stage: str, trained: str, out: str) -> str:
    """A bundle folder MONAI Label can serve: the stage's configs with the weights a run trained."""
    configs = os.path.join(BUNDLES, f"{dataset}_{stage}", "configs")
    weights = os.path.join(run, trained, "models", "model.pt")
    for path, what in ((configs, f"no bundle {dataset}_{stage} in {BUNDLES} (--conf dataset)"),
                       (weights, f"no trained {stage} at {weights}: train it with tskd-run --out {run} first")):
        if not os.path.exists(path):
            raise RuntimeError(f"tskd app: {what}")
    folder = os.path.join(out, stage)
    # Assembled once per trained weights: weights a /train round swapped in are kept across restarts (and the
    # train subprocess MONAI Label starts, which builds this app again).
    served = Artifact(folder, {"weights": file_sha256(weights), "configs": configs})
    with served.lock():
        if served.fresh():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(configs, os.path.join(folder, "configs"))
        os.makedirs(os.path.join(folder, "models"))
        for name in ("model.pt", "model_merged.pt"):
            if os.path.isfile(os.path.join(run, trained, "models", name)):
                shutil.copy(os.path.join(run, trained, "models", name), os.path.join(folder, "models", name))
        served.finish()
    return folder


def student_method(run: str) -> str:
    """The method of the one student a run folder holds (``student_<method>/models/model.pt``)."""
    found = sorted(name[len("student_"):] for name in (os.listdir(run) if os.path.isdir(run) else [])
                   if name.startswith("student_") and os.path.isfile(os.path.join(run, name, "models", "model.pt")))
    if len(found) != 1:
        raise RuntimeError(f"tskd app: {run} holds {'no trained student' if not found else 'students ' + ', '.join(found)}"
                           "; choose one with --conf method <method>" if found else
                           f"tskd app: no trained student in {run}: train one with tskd-run --out {run} first")
    return found[0]


class TskdApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        run = conf.get("run")
        if not run:
            raise RuntimeError("tskd app: give the tskd-run output folder with --conf run <folder>")
        self.run = os.path.abspath(run)
        dataset, method = conf.get("dataset", "demo"), conf.get("method") or student_method(self.run)
        served = os.path.join(self.run, "monailabel")
        self.dataset, self.method = dataset, method
        self.student_dir = assemble(self.run, dataset, "student", f"student_{method}", served)
        self.teacher_dir = assemble(self.run, dataset, "teacher", "teacher", served)
        self.student_overrides = run_overrides(os.path.join(self.run, f"student_{method}"))
        self.teacher_overrides = run_overrides(os.path.join(self.run, "teacher"))
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="tskd",
                         description="tskd: a small student distilled from SAM, with its teacher",
                         version="0.1.0")

    def init_infers(self):
        self.student = TskdInfer(self.student_dir, self.conf, self.student_overrides, preload=True,
                                 runtime=self.conf.get("student_runtime", "onnx"))
        self.teacher = TskdInfer(self.teacher_dir, self.conf, self.teacher_overrides, preload=False)
        return {"student": self.student, "teacher": self.teacher}

    def init_trainers(self):
        self.trainer = TskdStudentTrain(self.run, self.dataset, self.method,
                                        {"student": self.student_dir, "teacher": self.teacher_dir},
                                        self.student_overrides, profile=self.conf.get("profile", "quick"))
        return {"student": self.trainer}

    def init_strategies(self):
        return {"disagreement": Disagreement(self.student, self.teacher), "tta": TTAUncertainty(self.student),
                "random": Random()}

    def on_init_complete(self):
        """One inference on the first image before the first user asks: the first /infer then costs what the
        others do (the first call of the post-processing alone took ~0.5 s)."""
        super().on_init_complete()
        images = self.datastore().list_images()
        if images:
            self.student({"image": self.datastore().get_image_uri(images[0]), "skip_writer": True})
            logger.info(f"tskd app: the student is warm (one inference on {images[0]})")

    def _check(self, request: dict, models: dict, what: str) -> None:
        model = request.get("model")
        if model is not None and model not in models:
            raise HTTPException(404, f"no {what} '{model}' here (this app has {', '.join(models)})")
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image) and not self.datastore().get_image_uri(image):
            raise HTTPException(404, f"no image '{image}' in the datastore")

    def infer(self, request, datastore=None):
        self._check(request, self._infers, "model")
        return super().infer(request, datastore)

    def next_sample(self, request):
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise HTTPException(404, f"no strategy '{strategy}' here (this app has {', '.join(self._strategies)})")
        return super().next_sample(request)
