"""``/train`` in tskd's MONAI Label app: the student fine-tuned again on every label saved so far, from the run's
pre-trained encoder, and served only when it validates better than the one being served.

Each round writes ``<run>/monailabel/rounds/<n>/``: ``data/datalist.json`` (training: the labelled images of the
datastore; validation: the run's own validation split, the same images every round so rounds compare on them), the
fine-tuned student, and ``round.json`` (its validation Dice beside the served student's on the same images, and
whether it was swapped in). When the labels have at least doubled since the run's teacher was trained
(``RETRAIN_FACTOR``), the round runs the whole pipeline instead (teacher, transfer set, TS-KD pre-training, student)
and also serves the new teacher if its student wins. One round at a time: a round asked for while another trains
(a second ``/train``, in the server or in MONAI Label's background process) waits for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

from monailabel.interfaces.tasks.train import TrainTask

from common.data import load_datalist
from common.engines import read_training_record
from common.pipeline import RunConfig, run_pipeline
from common.pipeline.profiles import HEAD_PRETRAINED, PROFILES, stage_budget
from common.pipeline.stages import evaluate_bundle, stage_overrides, train_bundle
from common.provenance import FolderLock, read_json, write_json

__all__ = ["TskdStudentTrain", "RETRAIN_FACTOR"]

logger = logging.getLogger(__name__)
# Retrain the teacher and distil again when the labels have grown by this factor since the teacher was trained.
RETRAIN_FACTOR = 2.0


class TskdStudentTrain(TrainTask):
    def __init__(self, run: str, dataset: str, method: str, served: dict[str, str], overrides: dict,
                 profile: str = "quick") -> None:
        super().__init__("Fine-tune the student on the labels saved so far (and re-distil when they have doubled); "
                         "served only if it validates better")
        self.run, self.dataset, self.method, self.served = run, dataset, method, served
        self.overrides, self.profile = overrides, profile
        self.rounds = os.path.join(run, "monailabel", "rounds")

    def config(self):
        return {"profile": self.profile}

    def lock(self) -> FolderLock:
        return FolderLock(self.rounds, wait=True, what="the labelling rounds")

    def __call__(self, request, datastore):
        with self.lock():  # a round asked for while another trains waits for it (in this process or another)
            started = time.time()
            result = self._round(request, datastore)
            result.update(started=started, finished=time.time())
            write_json(os.path.join(self.rounds, str(result["round"]), "round.json"), result)
            return result

    def _datalist(self, folder: str, datastore) -> tuple[str, int]:
        run_datalist = os.path.join(self.overrides["dataset_dir"], "datalist.json")
        info = read_json(run_datalist)
        validation = load_datalist(run_datalist, "validation", allow_empty=True)
        held_out = {os.path.basename(item["image"]) for item in validation}
        training = []
        for image_id in sorted(datastore.get_labeled_images()):
            image, label = datastore.get_image_uri(image_id), datastore.get_label_uri(image_id, "final")
            if os.path.basename(image) not in held_out and label:
                training.append({"image": image, "label": label})
        # The run's validation and test splits, unchanged: rounds compare on the same images, and a re-distilling
        # round's summary reports the same test images as the run's.
        info.update(training=training, validation=validation,
                    test=load_datalist(run_datalist, "test"), allow_external_paths=True)
        os.makedirs(folder, exist_ok=True)
        write_json(os.path.join(folder, "datalist.json"), info)
        return folder, len(training)

    def _round(self, request, datastore) -> dict:
        index = len([d for d in os.listdir(self.rounds) if d.isdigit()]) if os.path.isdir(self.rounds) else 0
        root = os.path.join(self.rounds, str(index))
        data_dir, n_labels = self._datalist(os.path.join(root, "data"), datastore)
        profile = request.get("profile", self.profile)
        teacher_labels = stage_overrides(os.path.join(self.run, "teacher")).get("labels") or self._run_labels()
        redistil = n_labels >= RETRAIN_FACTOR * max(teacher_labels, 1) and self.method in ("tskd", "takd")
        if redistil:
            run_pipeline(RunConfig(dataset=self.dataset, data_dir=data_dir, method=self.method, profile=profile,
                                   image_size=self.overrides.get("image_size", 0),
                                   fpn=self.overrides.get("fpn", RunConfig.fpn),
                                   budget_scale=1.0,  # the rounds' fine-tunings train the profile's own budget too
                                   out=os.path.join(root, "pipeline")))
            student_root = os.path.join(root, "pipeline", f"student_{self.method}")
        else:
            student_root = os.path.join(root, "student")
            self._fine_tune(data_dir, student_root, profile)
        result = self._compare_and_swap(student_root, redistil, root)
        result.update(round=index, labels=n_labels, redistilled=redistil)
        return result

    def _run_labels(self) -> int:
        return len(load_datalist(os.path.join(self.overrides["dataset_dir"], "datalist.json"), "training"))

    def _fine_tune(self, data_dir: str, root: str, profile: str) -> None:
        overrides = {**self.overrides, "dataset_dir": data_dir, "labels": 0,
                     **stage_budget(PROFILES[profile], "student")}
        encoder = os.path.join(self.run, f"pretrain_{self.method}", "models", "model.pt")
        if os.path.isfile(encoder):
            overrides["encoder_checkpoint"] = encoder
            if self.method not in HEAD_PRETRAINED:
                overrides["init_head"] = False
        train_bundle(self.dataset, "student", root, overrides)

    def _served_dice(self, data_dir: str, root: str) -> float:
        """The served student's Dice on this round's validation images (its bundle evaluated there)."""
        report = evaluate_bundle(self.dataset, "student", os.path.join(root, "served_eval"),
                                 {**self.overrides, "dataset_dir": data_dir, "eval_split": "validation",
                                  "ckpt_path": os.path.join(self.served["student"], "models", "model.pt")})
        return float(report["mean_dice"])

    def _compare_and_swap(self, student_root: str, redistil: bool, root: str) -> dict:
        new = read_training_record(student_root).get("best_metric")
        served = self._served_dice(os.path.join(root, "data"), root)
        swap = new is not None and new > served
        if swap:
            self._replace(os.path.join(student_root, "models", "model.pt"), self.served["student"])
            if redistil:
                self._replace(os.path.join(os.path.dirname(student_root), "teacher", "models", "model.pt"),
                              self.served["teacher"])
        logger.info(f"round: new student validation Dice {new}, served {served:.4f}: {'swapped in' if swap else 'kept'}")
        return {"new_val_dice": new, "served_val_dice": served, "swapped": swap}

    @staticmethod
    def _replace(weights: str, bundle: str) -> None:
        target = os.path.join(bundle, "models", "model.pt")
        tmp = target + ".incoming"
        shutil.copy(weights, tmp)
        os.replace(tmp, target)  # MONAI Label reloads a model whose file time changed

    def stats(self):
        rounds = sorted((d for d in os.listdir(self.rounds) if d.isdigit()), key=int) if os.path.isdir(self.rounds) else []
        return {"rounds": len(rounds), **({"last": read_json(os.path.join(self.rounds, rounds[-1], "round.json"))}
                                           if rounds else {})}

    def is_valid(self):
        return True
