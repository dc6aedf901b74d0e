"""Explanations of the ensemble: Grad-CAM (per member, and fused over the ensemble by its rule)
and LIME."""
