"""``tskd-export``: parses its arguments and calls the package (``common.pipeline.cli.export_main``); ``tskd-export --help`` says
what it does. Kept so that ``python scripts/export_bundle.py ...`` works as before."""

from common.pipeline.cli import export_main

if __name__ == "__main__":
    export_main()
