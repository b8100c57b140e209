"""clearbench: the CLEAR unlearning benchmark as one reproducible pipeline."""

__version__ = "0.1.0"
