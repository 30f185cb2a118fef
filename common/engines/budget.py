"""Training budgets in optimizer steps, with validation-based early stopping.

An 11-image set and a 300-image set need about the same number of optimizer steps to converge, not the same
number of passes over their data. With ``steps`` > 0 a bundle trains for at most ``steps`` optimizer steps in
"epochs" of ``epoch_length`` steps each (Ignite's ``epoch_length``: a small set is cycled through, a large
one is walked through across epochs); it validates after each of them, and ``patience`` validations without
a better key metric stop the run early. With ``steps`` = 0 an epoch is one pass over the data, as before.

``RecipeRecord`` writes ``recipe.json`` beside the weights when training starts: what the run really trains
with (the loader's batch, the optimizer as built, per parameter group, the precision), whatever the configs and
overrides said.
``ValidationTracker`` writes ``training.json`` beside the weights: the steps trained, the budget, the best
validation metric and the step it was reached at, whether the run stopped early, and the validation curve
(``history``: [step, value] per validation). The pipeline reads it to put the teacher's and the students'
validation Dice side by side.
"""

from __future__ import annotations

import json
import logging
import math
import os

from ignite.engine import Engine, Events

from common.engines.distributed import is_rank0
from common.provenance import save_torch
from common.settings import check_positive

__all__ = ["budget_epochs", "plateau", "replay_stop_rule", "STOP_RULES", "ValidationTracker", "read_training_record", "RecipeRecord", "read_recipe"]

RECORD, RECIPE = "training.json", "recipe.json"


def budget_epochs(epochs: int, steps: int = 0, epoch_length: int = 25) -> int:
    """The trainer's ``max_epochs``: ``epochs``, or with a step budget the epochs of ``epoch_length``
    optimizer steps that hold ``steps`` (the last one may run past it by less than one epoch)."""
    if not steps or int(steps) <= 0:
        return int(epochs)
    check_positive("epoch_length", epoch_length)
    return max(1, math.ceil(int(steps) / int(epoch_length)))


def plateau(values: list[float], patience: int = 0, fraction: float = 0.0, smoothing: float = 0.0,
            step: int = 0, min_steps: int = 0) -> tuple[int, bool]:
    """The stop rule on the validations so far: which one is the best (on the moving average of weight
    ``smoothing``; the first of equals), and whether the run stops now (``patience`` > 0, at least
    max(``patience``, ceil(``fraction`` x validations)) validations came after the best, and the run, now at
    ``step``, has reached ``min_steps``)."""
    average, smoothed = None, []
    for value in values:
        average = value if average is None else smoothing * average + (1.0 - smoothing) * value
        smoothed.append(average)
    pick = max(range(len(smoothed)), key=lambda i: (smoothed[i], -i))
    needed = max(int(patience), math.ceil(fraction * len(values)))
    return pick, patience > 0 and len(values) - 1 - pick >= needed and step >= min_steps


# The stop rules scripts/bench/convergence.py replays on measured curves: ValidationTracker's arguments and the
# step budget (cap).
STOP_RULES = {
    "patience 3, cap 300 (quick before)": {"patience": 3, "cap": 300},
    "no stop, cap 300": {"patience": 0, "cap": 300},
    "patience 3": {"patience": 3},
    "patience 6": {"patience": 6},
    "patience 3 or half the run": {"patience": 3, "fraction": 0.5},
    "patience 4 or half the run": {"patience": 4, "fraction": 0.5},
    "smoothed 0.5, patience 3": {"patience": 3, "smoothing": 0.5},
    "smoothed 0.5, patience 3 or half the run": {"patience": 3, "fraction": 0.5, "smoothing": 0.5},
    "no stop": {"patience": 0},
    "no stop, last weights": {"patience": 0, "keep": "last"},
}


def replay_stop_rule(points: list[tuple[int, float]], patience: int = 0, fraction: float = 0.0, smoothing: float = 0.0,
                     cap: int = 0, keep: str = "best", min_steps: int = 0) -> tuple[int, int]:
    """``plateau`` replayed on a measured curve of (step, validation metric) up to step ``cap`` (0: all of it), as
    ValidationTracker would have run it; returns the step the run stops at and the step whose weights it keeps
    (``keep`` "last": the weights it stops with). A cap cuts the curve, not its learning-rate schedule: a rule
    with a cap below the curve's budget replays a run whose rate had not decayed yet."""
    points = [p for p in points if not cap or p[0] <= cap]
    for k in range(1, len(points) + 1):
        pick, stop = plateau([v for _, v in points[:k]], patience, fraction, smoothing, points[k - 1][0], min_steps)
        if stop or k == len(points):
            return points[k - 1][0], points[k - 1 if keep == "last" else pick][0]
    raise ValueError("replay_stop_rule: an empty curve")


class ValidationTracker:
    """After each validation: keep the best model, record the best key metric and its step, and stop the run
    when ``patience`` validations in a row brought no better one (``patience`` 0: never stop early).

    Attach it after the ``ValidationHandler`` in the trainer's handlers (handlers run in order). What selects
    the model (the best value, its step, the validations waited) lives in the trainer's state
    (``state_dict_user_keys``), so the epoch checkpoints carry it: a resumed run goes on counting patience and
    never overwrites the best model with a worse one, and ends as the uninterrupted run would. An early-stopped
    run is a finished run: its trainer state records the epoch it stopped at as the last one, so running the
    bundle again starts a new run instead of resuming this one.

    Args:
        validator: the evaluator the ``ValidationHandler`` runs.
        patience: validations without improvement before stopping.
        patience_fraction: the patience also grows with the run: at least this fraction of the validations so
            far (0.5: the best must be older than half the run), so a long run is not cut by a few noisy ones.
        smoothing: the best is judged on an exponential moving average of the metric (each validation's
            weight 1 - ``smoothing``; 0: the metric itself), as nnU-Net picks its best checkpoint.
        min_steps: no early stop before this many steps. The moving average starts at the first validation's
            own value, so a lucky first validation can lead it for a few validations: on the demo grid a
            reference stopped at step 100 of 750 keeping step 25's weights (test Dice 0.72 against 0.85-0.86
            for its other seeds). The bundles set a third of the step budget.
        output_dir: where ``training.json`` and the best model are written (the bundle's ``models`` folder).
        model: the module (or ``state_dict`` holder) whose weights are the best model; None: not saved.
        filename: the best model's file in ``output_dir``.
    """

    KEYS = ("tskd_best_metric", "tskd_best_step", "tskd_waited", "tskd_history")

    def __init__(self, validator: Engine, patience: int = 0, output_dir: str = "", model=None,
                 filename: str = "model.pt", patience_fraction: float = 0.0, smoothing: float = 0.0,
                 min_steps: int = 0) -> None:
        self.validator = validator
        self.min_steps = int(min_steps)
        self.patience, self.patience_fraction, self.smoothing = int(patience), float(patience_fraction), float(smoothing)
        self.output_dir, self.model, self.filename = output_dir, model, filename
        self.stopped_early = False
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        for key, value in zip(self.KEYS, (-math.inf, 0, 0, [])):
            setattr(engine.state, key, value)
            if key not in engine.state_dict_user_keys:
                engine.state_dict_user_keys.append(key)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self.budget = engine.state.max_epochs * (engine.state.epoch_length or 0)

    def _save_model(self) -> None:
        if self.model is None or not (self.output_dir and is_rank0()):
            return
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        save_torch(self.model.state_dict(), path)  # a kill while saving never leaves half a model

    def __call__(self, engine: Engine) -> None:
        state = self.validator.state
        if state.epoch != engine.state.epoch or not state.metrics:
            return  # no validation this epoch
        value = state.metrics.get(state.key_metric_name)
        s = engine.state
        if value is None:
            return
        s.tskd_history = [*s.tskd_history, [s.iteration, float(value)]]
        pick, stop = plateau([v for _, v in s.tskd_history], self.patience, self.patience_fraction, self.smoothing,
                             s.iteration, self.min_steps)
        s.tskd_waited = len(s.tskd_history) - 1 - pick
        if s.tskd_waited == 0:
            s.tskd_best_metric, s.tskd_best_step = float(value), s.iteration
            self._save_model()
        if stop and s.epoch < s.max_epochs:
            self.stopped_early = True
            self.logger.info(f"early stop at step {s.iteration} of {self.budget}: {s.tskd_waited} validations "
                             f"without a better {state.key_metric_name} (best {s.tskd_best_metric:.4f} at step "
                             f"{s.tskd_best_step})")
            s.max_epochs = s.epoch  # this epoch ends the run (see the class notes)
            engine.terminate()

    def _write(self, engine: Engine) -> None:
        if not (self.output_dir and is_rank0()):
            return
        s = engine.state
        if s.tskd_best_metric == -math.inf and self.model is not None:
            self._save_model()  # no validation gave a number: keep the last weights rather than none
        os.makedirs(self.output_dir, exist_ok=True)
        record = {"steps": s.iteration, "budget_steps": self.budget, "stopped_early": self.stopped_early,
                  "best_metric": None if s.tskd_best_metric == -math.inf else s.tskd_best_metric,
                  "best_step": s.tskd_best_step, "metric": self.validator.state.key_metric_name,
                  "history": s.tskd_history,
                  "stop_rule": {"patience": self.patience, "patience_fraction": self.patience_fraction,
                                "smoothing": self.smoothing, "min_steps": self.min_steps}}
        with open(os.path.join(self.output_dir, RECORD), "w") as f:
            json.dump(record, f, indent=1)


def _read_record(bundle_root: str, name: str) -> dict:
    try:
        with open(os.path.join(bundle_root, "models", name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def read_training_record(bundle_root: str) -> dict:
    """A bundle's ``models/training.json``, or {} when it trained without validation (or not at all)."""
    return _read_record(bundle_root, RECORD)


class RecipeRecord:
    """Write ``recipe.json`` into ``output_dir`` when training starts: the batch size the trainer's loader uses
    (and whether it drops a last short batch), the steps planned, the optimizer's type and, per parameter
    group, its base learning rate, betas / momentum, weight decay and number of tensors, and the run's
    settings. A later override can never leave the docs and the run disagreeing unseen.

    Args:
        output_dir: where ``recipe.json`` is written (the bundle's ``models`` folder).
        optimizer: the optimizer the trainer steps.
        settings: the run's settings (the bundle's ``run_settings``), recorded as they are.
    """

    def __init__(self, output_dir: str, optimizer, settings: dict | None = None) -> None:
        self.output_dir, self.optimizer, self.settings = output_dir, optimizer, settings or {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not (self.output_dir and is_rank0()):
            return
        loader = engine.data_loader
        groups = []
        for group in self.optimizer.param_groups:
            # A scheduler keeps the configured rate in ``initial_lr`` and may have set ``lr`` to its warm-up start.
            entry = {"lr": group.get("initial_lr", group["lr"]), "weight_decay": group.get("weight_decay", 0.0),
                     "tensors": len(group["params"])}
            entry.update({k: list(group[k]) if isinstance(group[k], tuple) else group[k]
                          for k in ("betas", "momentum", "nesterov") if k in group})
            groups.append(entry)
        record = {"batch_size": getattr(loader, "batch_size", None), "drop_last": getattr(loader, "drop_last", None),
                  "steps": engine.state.max_epochs * (engine.state.epoch_length or 0),
                  "optimizer": type(self.optimizer).__name__, "param_groups": groups,
                  "precision": _precision(engine), "settings": self.settings}
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, RECIPE), "w") as f:
            json.dump(record, f, indent=1, default=str)


def _precision(engine: Engine) -> str:
    """What the trainer really computes in: bf16 autocast on the CPU (``CpuAutocast``), the engine's CUDA amp, or
    fp32."""
    from common.engines.precision import CpuAutocast

    if isinstance(getattr(engine, "network", None), CpuAutocast):
        return "bf16 autocast (CPU)"
    return "amp (CUDA)" if getattr(engine, "amp", False) else "fp32"


def read_recipe(bundle_root: str) -> dict:
    """A bundle's ``models/recipe.json``, or {} when it has not trained."""
    return _read_record(bundle_root, RECIPE)
