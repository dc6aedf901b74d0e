"""Scoring images with the ensemble: Ensemble, streaming prediction, calibrated outputs and
uncertainty."""
