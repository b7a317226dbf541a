"""The single source of poppins' version (pyproject.toml reads it from here)."""
__version__ = "0.1.0"
