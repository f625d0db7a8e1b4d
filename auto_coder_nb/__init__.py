"""auto-coder-nb: a coding assistant for Jupyter and the terminal."""

__version__ = "0.1.0"
