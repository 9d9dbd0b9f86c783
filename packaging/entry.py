"""PyInstaller entry script of ``kefu-node`` (the code lives in :mod:`kefu.node_main`)."""

import sys

from kefu.node_main import main

if __name__ == "__main__":
    sys.exit(main())
