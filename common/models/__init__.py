from common.models.checkpoints import TrainableState, check_state_dict, kd_teacher_weights, load_state_file, require_file
from common.models.lora import SplitQKV, apply_qv_lora, lora_parameter_names, merge_qv_lora, qkv_layout
from common.models.sam_teacher import (SAM_VARIANTS, SamTeacher, build_litemedsam_teacher, build_sam_teacher, export_merged_teacher,
                                       build_teacher, fit_sam_state_dict, litemedsam_checkpoint_path, sam_architecture)
from common.models.vit_fpn import (FPN_PRESETS, SimpleFeaturePyramid, ViTFPN, build_vit_fpn, checkpoint_num_heads,
                                    load_encoder_weights, model_size)
from common.models.kd_student import DistillationStudent
from common.models.selfsup import MaskedAutoencoder, MoCoV3, contrastive_loss, mae_loss, random_masking
from common.models.export import count_gflop, export_onnx, max_abs_diff, onnx_session, trace_model
from common.models.reference import build_dynunet, deep_supervision_heads, nnunet_2d_plan, nnunet_batch_size
