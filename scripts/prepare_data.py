"""``tskd-prepare``: parses its arguments and calls the package (``common.pipeline.cli.prepare_main``); ``tskd-prepare --help`` says
what it does. Kept so that ``python scripts/prepare_data.py ...`` works as before."""

from common.pipeline.cli import prepare_main

if __name__ == "__main__":
    prepare_main()
