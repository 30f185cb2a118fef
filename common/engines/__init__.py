from common.engines.handlers import NaNLossGuard, ResumableCheckpoint, latest_checkpoint
from common.engines.metrics import (HD95Handler, MetricsReport, PhysicalHausdorffDistanceMetric, format_report,
                                    summarise_metric_details)
