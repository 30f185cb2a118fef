"""Which unlabelled image to label next: MONAI Label active-learning strategies.

``Disagreement`` ranks images by how much the teacher and the student disagree (1 - their mean Dice over the
classes either predicts): where two models that learnt the same masks differ, a label teaches the student most.
``TTAUncertainty`` ranks by the student's disagreement with itself under flips (its uncertainty by test-time
augmentation). Scores are kept per image until the weights of a model change.
"""

from __future__ import annotations

import logging
import os
from itertools import combinations

import numpy as np
from monailabel.interfaces.tasks.strategy import Strategy

from common.labelling.runs import disagreement

__all__ = ["Disagreement", "TTAUncertainty", "disagreement"]

logger = logging.getLogger(__name__)


def _predict(task, path: str, **request) -> np.ndarray:
    _, data = task({"image": path, "skip_writer": True, **request})
    pred = data[task.output_label_key]
    return np.squeeze(np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)).astype(np.int64)


def _weights_stamp(*tasks) -> tuple:
    stamps = []
    for task in tasks:
        path = task.get_path(validate=False) if hasattr(task, "get_path") else None
        stamps.append(os.path.getmtime(path) if path and os.path.isfile(path) else 0)
    return tuple(stamps)


class _Ranked(Strategy):
    """Scores every unlabelled image (cached until a model's weights change) and returns the highest."""

    def __init__(self, description: str, *tasks) -> None:
        super().__init__(description)
        self.tasks = tasks
        self._scores: dict[tuple, float] = {}

    def score(self, path: str) -> float:
        raise NotImplementedError

    def __call__(self, request, datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        stamp = _weights_stamp(*self.tasks)
        scores = {}
        for image in images:
            key = (image, stamp)
            if key not in self._scores:
                self._scores[key] = self.score(datastore.get_image_uri(image))
            scores[image] = self._scores[key]
        best = max(images, key=lambda i: scores[i])
        logger.info(f"{type(self).__name__}: {best} scores {scores[best]:.4f} of {len(images)} unlabelled images")
        return {"id": best, "score": round(scores[best], 6), "scores": {k: round(v, 6) for k, v in scores.items()}}


class Disagreement(_Ranked):
    def __init__(self, student, teacher) -> None:
        super().__init__("The image where the teacher and the student disagree most (1 - Dice between them)",
                         student, teacher)

    def score(self, path: str) -> float:
        student, teacher = self.tasks
        return disagreement(_predict(student, path), _predict(teacher, path))


class TTAUncertainty(_Ranked):
    FLIPS = (None, [-1], [-2])

    def __init__(self, student) -> None:
        super().__init__("The image where the student disagrees most with itself under flips (test-time "
                         "augmentation)", student)

    def score(self, path: str) -> float:
        (student,) = self.tasks
        preds = [_predict(student, path, **({"tta_flip": f} if f else {})) for f in self.FLIPS]
        return float(np.mean([disagreement(a, b) for a, b in combinations(preds, 2)]))
