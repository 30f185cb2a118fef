from common.engines.budget import RecipeRecord, ValidationTracker, budget_epochs, read_recipe, read_training_record
from common.engines.handlers import (NaNLossGuard, ResumableCheckpoint, RunState, WeightsLoader, describe_files,
                                     latest_checkpoint)
from common.engines.metrics import (VolumeMetrics, CaseCountHandler, DiceHandler, EmptyAwareDiceMetric, EmptyAwareIoUMetric,
                                    HD95Handler, ImageCaseMetric, IoUHandler, MetricsReport,
                                    PhysicalHausdorffDistanceMetric, format_report, score_label_maps,
                                    summarise_metric_details)
from common.engines.distill_trainer import TEACHER_HIDDEN, TEACHER_LOGITS, DistillationTrainer, optimisation_step
from common.engines.inferers import MirrorInferer
from common.engines.precision import CpuAutocast, autocast_network, cpu_bf16_native, engine_amp
from common.engines.selfsup_trainer import SelfSupervisedTrainer
from common.engines.teacher_cache import CachedTeacherDataset, TeacherCache, kd_dataset
from common.provenance import file_sha256 as file_digest
from common.provenance import module_digest
from common.engines.distributed import (barrier, check_ranks_agree, finish_distributed, init_distributed, is_rank0,
                                        local_device, wrap_ddp)
from common.engines.schedules import LR_SCHEDULES, warmup_schedule
