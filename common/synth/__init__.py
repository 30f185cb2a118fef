from common.synth.denoisers import SwinDenoiser, UNetDenoiser, build_denoiser, timestep_embedding
from common.synth.diffusion import DiffusionTrainer, build_scheduler, ema_handler, sample, write_synthetic_set
from common.synth.quality import image_transform, load_images, quality_report
from common.synth.transfer_set import make_synthetic_transfer_set, report_folder, save_generator
