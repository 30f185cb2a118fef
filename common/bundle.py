"""Where a bundle lives, for configs run from any working directory."""

from __future__ import annotations

import ast
import os
import sys

__all__ = ["bundle_root"]


def bundle_root(default: str = ".") -> str:
    """The bundle folder of the config file given to ``python -m monai.bundle run``.

    MONAI looks for ``metadata.json`` and ``logging.conf`` beside the first ``--config_file``; by the
    same rule the bundle root is that file's folder, or its parent when the folder is ``configs``. So
    ``python -m monai.bundle run --config_file bundles/demo_student/configs/train.json`` writes to
    ``bundles/demo_student/models`` from any working directory. ``--bundle_root`` still overrides it.

    Args:
        default: returned when no ``--config_file`` is on the command line (e.g. API calls).

    Returns:
        The bundle root path.
    """
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg.startswith("--config_file"):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            if value.startswith("["):
                try:
                    value = ast.literal_eval(value)[0]
                except (ValueError, SyntaxError, IndexError):
                    value = value.strip("[]").split(",")[0].strip(" '\"")
            folder = os.path.dirname(os.path.abspath(value))
            return os.path.dirname(folder) if os.path.basename(folder) == "configs" else folder
    return default
