"""PyInstaller entry script of ``kefu-node`` (the code lives in :mod:`kefu.node.main`)."""

import multiprocessing
import sys

from kefu.node.main import main

if __name__ == "__main__":
    # Worker processes (node.yaml `workers`) are spawned by re-running this executable.
    multiprocessing.freeze_support()
    sys.exit(main())
