"""Scoring images with the ensemble: Ensemble, streaming prediction, calibrated outputs and
uncertainty; one prediction in memory (``prediction``) shared by predict.py and the Python API."""
