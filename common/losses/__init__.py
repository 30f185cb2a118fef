from common.losses.distill import TaskSpecificKDLoss, align_grid, match_logits
from common.losses.supervision import DeepSupervised
