"""Seeded chest phantoms with true lung and opacity masks (the demo's data and the tests' fixture)."""
