import sys

from codl.cli import main

# Benchmarks that start torch.multiprocessing workers use the "spawn" method, which re-imports
# this module in every child under the name "__mp_main__": unguarded, each child would run the
# whole command line again.
if __name__ == "__main__":
    sys.exit(main())
