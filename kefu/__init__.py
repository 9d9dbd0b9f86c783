"""Kefu: edge AI customer-service agents with a central control plane.

Shared pieces live here: the exception hierarchy (:mod:`kefu.errors`), the signed model
bundle format (:mod:`kefu.bundle`), signing keys (:mod:`kefu.keys`) and the CLI entry point.
"""

import os as _os

from kefu.errors import (
    BundleError,
    ConfigError,
    DatasetError,
    KefuError,
    PermanentError,
    TemporaryError,
)

__version__ = "0.1.0"

# In a source checkout, `import kefu` may resolve to ./kefu straight from the working directory
# (ahead of the installed package-dir mapping), and kefu.models etc. would then be missing.
# Map the sibling packages exactly as pyproject's package-dir does.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_root, "models", "__init__.py")
):
    __path__.append(_root)

__all__ = [
    "BundleError",
    "ConfigError",
    "DatasetError",
    "KefuError",
    "PermanentError",
    "TemporaryError",
    "__version__",
]
