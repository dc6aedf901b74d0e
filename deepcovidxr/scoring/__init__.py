"""Numbers from scores, numpy only: combination rules and weight search, metrics, calibration,
uncertainty."""
