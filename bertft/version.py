"""The package version, in its own module: code inside the package reads it without importing ``bertft`` itself."""

__version__ = "0.1.0"
