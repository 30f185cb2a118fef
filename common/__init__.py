"""tskd: shared components of the bundles (teacher, student, losses, data, engines)."""

from common import bundle, data, engines, models, settings, synth
from common.errors import CheckpointError, DataError, TskdError, install_excepthook
from common.settings import check_run_settings

# Bundle runs show a TskdError as one line of advice instead of MONAI's chained traceback.
install_excepthook()
