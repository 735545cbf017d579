"""middo: Middo (model-informed dynamic data optimization) as a reproducible DVC pipeline."""

__version__ = "0.1.0"
