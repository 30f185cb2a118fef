"""The pipeline as a library: profiles, the run configuration, the stages (each a MONAI bundle run in process),
the main job, the comparison grid, and the command lines that call them (``tskd-run``, ``tskd-grid``,
``tskd-prepare``, ``tskd-export``; ``scripts/*.py`` call the same functions)."""

from common.pipeline.config import RunConfig
from common.pipeline.profiles import METHODS, PROFILES, PRETRAIN_BATCH, pretrain_recipe, stage_budget
from common.pipeline.run import run_pipeline

__all__ = ["RunConfig", "METHODS", "PROFILES", "PRETRAIN_BATCH", "pretrain_recipe", "stage_budget", "run_pipeline"]
