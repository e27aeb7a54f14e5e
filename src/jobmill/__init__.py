"""jobmill: a job manager for scientific data pipelines."""

__version__ = "0.1.0"
