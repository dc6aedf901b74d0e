"""The config system: the schema machinery, the options several stages share, one dataclass per
stage, hyperparameter files."""
