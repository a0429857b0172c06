"""dynalab: a fast, trustworthy JAX lab for Dyna-style model-based RL."""

__version__ = "0.1.0"
