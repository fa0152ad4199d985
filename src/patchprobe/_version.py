"""The package version: the single source for `patchprobe.__version__`, pyproject.toml and saved metadata.

A leaf module (imports nothing) so that low layers (bank, train) can record the version without
importing the package's top level.
"""

__version__ = "0.1.0"
