"""The on-disk contract: every folder and file name, the member table, run paths, the backbone
table, classes, atomic writes, safe pickle, per-file reports. No TensorFlow."""
