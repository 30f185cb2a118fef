"""tskd: shared components of the bundles (teacher, student, losses, data, engines)."""

from common import data, engines, models, settings, synth
from common.errors import CheckpointError, DataError, TskdError, install_excepthook
from common.settings import check_run_settings
