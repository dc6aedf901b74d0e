"""The config system: the schema machinery (``schema``, ``checks``, ``run_record``), the options
several stages share (``options``, ``precision``), one dataclass per stage (``data_stages``,
``training_stages``, ``inference_stages``), hyperparameter files (``hyperparams``).

One frozen keyword-only dataclass per script. Each field declares its flags (the original's
spellings kept), help, type, default and check (:mod:`deepcovidxr.config.schema`); the scripts'
parsers, the ``--config`` file reader and the per-run ``run_config.json`` are generated from these
classes, and a class docstring is its script's ``--help`` description. Options several stages share
are declared once in :mod:`deepcovidxr.config.options`. Imports nothing heavy: ``--help`` stays
instant.
"""
