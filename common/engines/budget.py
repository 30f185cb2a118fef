"""Training budgets in optimizer steps, with validation-based early stopping.

An 11-image set and a 300-image set need about the same number of optimizer steps to converge, not the same
number of passes over their data. With ``steps`` > 0 a bundle trains for at most ``steps`` optimizer steps in
"epochs" of ``epoch_length`` steps each (Ignite's ``epoch_length``: a small set is cycled through, a large
one is walked through across epochs); it validates after each of them, and ``patience`` validations without
a better key metric stop the run early. With ``steps`` = 0 an epoch is one pass over the data, as before.

``ValidationTracker`` writes ``training.json`` beside the weights: the steps trained, the budget, the best
validation metric and the step it was reached at, and whether the run stopped early. The pipeline reads it to
put the teacher's and the students' validation Dice side by side.
"""

from __future__ import annotations

import json
import logging
import math
import os

from ignite.engine import Engine, Events

from common.engines.distributed import is_rank0
from common.settings import check_positive

__all__ = ["budget_epochs", "ValidationTracker", "read_training_record"]

RECORD = "training.json"


def budget_epochs(epochs: int, steps: int = 0, epoch_length: int = 25) -> int:
    """The trainer's ``max_epochs``: ``epochs``, or with a step budget the epochs of ``epoch_length``
    optimizer steps that hold ``steps`` (the last one may run past it by less than one epoch)."""
    if not steps or int(steps) <= 0:
        return int(epochs)
    check_positive("epoch_length", epoch_length)
    return max(1, math.ceil(int(steps) / int(epoch_length)))


class ValidationTracker:
    """After each validation: record the best key metric and its step, and stop the run when ``patience``
    validations in a row brought no better one (``patience`` 0: never stop early).

    Attach it after the ``ValidationHandler`` in the trainer's handlers (handlers run in order). An
    early-stopped run is a finished run: its trainer state records the epoch it stopped at as the last one,
    so running the bundle again starts a new run instead of resuming this one.

    Args:
        validator: the evaluator the ``ValidationHandler`` runs.
        patience: validations without improvement before stopping.
        output_dir: where ``training.json`` is written (the bundle's ``models`` folder).
    """

    def __init__(self, validator: Engine, patience: int = 0, output_dir: str = "") -> None:
        self.validator = validator
        self.patience = int(patience)
        self.output_dir = output_dir
        self.best, self.best_step, self.waited = -math.inf, 0, 0
        self.stopped_early = False
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self.budget = engine.state.max_epochs * (engine.state.epoch_length or 0)

    def __call__(self, engine: Engine) -> None:
        state = self.validator.state
        if state.epoch != engine.state.epoch or not state.metrics:
            return  # no validation this epoch
        value = state.metrics.get(state.key_metric_name)
        if value is not None and value > self.best:
            self.best, self.best_step, self.waited = float(value), engine.state.iteration, 0
        else:
            self.waited += 1
        if self.patience > 0 and self.waited >= self.patience and engine.state.epoch < engine.state.max_epochs:
            self.stopped_early = True
            self.logger.info(f"early stop at step {engine.state.iteration} of {self.budget}: {self.patience} "
                             f"validations without a better {state.key_metric_name} (best {self.best:.4f} at step "
                             f"{self.best_step})")
            engine.state.max_epochs = engine.state.epoch  # this epoch ends the run (see the class notes)
            engine.terminate()

    def _write(self, engine: Engine) -> None:
        if not (self.output_dir and is_rank0()):
            return
        os.makedirs(self.output_dir, exist_ok=True)
        record = {"steps": engine.state.iteration, "budget_steps": self.budget, "stopped_early": self.stopped_early,
                  "best_metric": None if self.best == -math.inf else self.best, "best_step": self.best_step,
                  "metric": self.validator.state.key_metric_name}
        with open(os.path.join(self.output_dir, RECORD), "w") as f:
            json.dump(record, f, indent=1)


def read_training_record(bundle_root: str) -> dict:
    """A bundle's ``models/training.json``, or {} when it trained without validation (or not at all)."""
    try:
        with open(os.path.join(bundle_root, "models", RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
