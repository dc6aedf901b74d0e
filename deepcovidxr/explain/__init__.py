"""Explanations of the ensemble: Grad-CAM and LIME."""
