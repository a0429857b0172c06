"""Model-free agents (SAC) used inside the Dyna loop."""
