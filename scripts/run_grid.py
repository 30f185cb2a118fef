"""``tskd-grid``: parses its arguments and calls the package (``common.pipeline.cli.grid_main``); ``tskd-grid --help`` says
what it does. Kept so that ``python scripts/run_grid.py ...`` works as before."""

from common.pipeline.cli import grid_main

if __name__ == "__main__":
    grid_main()
