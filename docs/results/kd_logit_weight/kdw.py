"""Ad hoc: run_pipeline with the TS-KD pre-training's loss weights overridden (W_LOGIT W_HIDDEN first argv)."""
import sys
import common.pipeline.stages as stages
from common.pipeline.profiles import pretrain_recipe as _orig

w_logit, w_hidden = float(sys.argv[1]), float(sys.argv[2])
def recipe(profile, method):
    r = _orig(profile, method)
    if method == "tskd":
        r.update(w_logit=w_logit, w_hidden=w_hidden)
    return r
stages.pretrain_recipe = recipe
from common.pipeline.cli import run_main
run_main(sys.argv[3:])
