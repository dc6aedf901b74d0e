"""Test and benchmark tools that never run inside the package: phantom learning tasks, fitting the input check."""
