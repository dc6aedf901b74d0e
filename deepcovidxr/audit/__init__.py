"""audit.py's computations: whether an ensemble reads the lungs or the hospital. The three scoring
modes with the lung mask, the members' pooled features, leakage across splits, the summaries and
the findings; the stage (:mod:`deepcovidxr.stages.audit`) reads and writes the files."""
