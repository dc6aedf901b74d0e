"""The Keras networks: ensemble members built, saved and loaded from the backbone table, and the
authors' Keras 2 HDF5 files."""
