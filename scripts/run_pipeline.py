"""``tskd-run``: parses its arguments and calls the package (``common.pipeline.cli.run_main``); ``tskd-run --help`` says
what it does. Kept so that ``python scripts/run_pipeline.py ...`` works as before."""

from common.pipeline.cli import run_main

if __name__ == "__main__":
    run_main()
