from common.data.datalists import (class_names, has_split, load_datalist, read_datalist_info, spacing_unit,
                                   validation_items)
from common.data.figures import save_prediction_grid
from common.data.demo import block_split, mni_paths, prepare_demo
from common.data.io import atomic_folder, check_output_folder, read_prediction
from common.data.transforms import (LoadImage2Dd, MaskOutsideROId, ValidateSampled, contrastive_views,
                                   nnunet_augmentation, random_affine)
from common.data.transfer import check_unlabelled_folder, make_transfer_set
from common.data.convert import Case, convert_cases, read_image, read_mask
from common.data.datasets import DATASETS, DatasetSpec, parse_classes, prepare_dataset
