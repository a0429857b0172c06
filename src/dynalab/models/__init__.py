"""Learned dynamics-reward models (the probabilistic ensemble of MBPO / FTFL)."""
