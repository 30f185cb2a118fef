"""tskd in MONAI Label: the student served warm as the auto-segmentation model, the teacher beside it (loaded on
first use), 2D results written with the image's own affine, and next-image strategies that rank unlabelled images
by teacher-student disagreement or by the student's test-time-augmentation uncertainty.

MONAI Label imports this only inside its server (``scripts/monailabel_app``); nothing else in ``common`` imports
it, so the package works without monailabel installed.
"""
