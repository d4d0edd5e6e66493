"""Simulation: datasets, partitioners, models and local training for embedded runs."""
