from common.losses.distill import TaskSpecificKDLoss, align_grid, match_logits
