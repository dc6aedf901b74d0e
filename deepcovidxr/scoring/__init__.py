"""Numbers from scores, numpy only: the task (what differs between binary and multi-class),
combination rules and weight search, the weight files, metrics, calibration, operating points,
uncertainty."""
