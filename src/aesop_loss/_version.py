"""The package version, in one place (read by the build backend, the model cards and run markers)."""

__version__ = "0.1.0"
