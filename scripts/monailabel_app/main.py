"""tskd's MONAI Label app: label a folder of images with a trained tskd run's student and teacher.

    monailabel start_server --app scripts/monailabel_app --studies <folder of images> --conf run runs/demo

``--conf run``: a tskd-run output folder (its ``student_<method>/`` and ``teacher/``); ``--conf dataset`` (default
``demo``) names its bundles, ``--conf method`` its student (default: the run's only one). Models: ``student`` (loaded when
the server starts; the default for auto-segmentation) and ``teacher`` (loaded on its first request: it is slow).
Next-image strategies: ``disagreement`` (teacher vs student), ``tta`` (the student under flips) and ``random``.
``/train/student`` runs a labelling round (``common.labelling.train``): the student fine-tuned on every label saved
so far, served only when it validates better (``--conf profile`` sets its budget, default ``quick``). The student is
served through ONNX Runtime (exported when the server starts and after each swap, checked against torch to 1e-4);
``--conf student_runtime torch`` serves it with torch.
"""

from common.labelling.app import TskdApp  # noqa: F401 (MONAI Label finds the app class in this module)
