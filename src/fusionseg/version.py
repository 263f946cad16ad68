"""The package version (one place; ``fusionseg --version`` and ``fusionseg.__version__`` read it)."""

__version__ = "0.1.0"
