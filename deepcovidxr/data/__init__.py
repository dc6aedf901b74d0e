"""Datasets: the labels table and patient-wise split, tf.data pipelines, the NIH ChestX-ray14 table
and download."""
