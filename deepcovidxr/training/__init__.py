"""Training members: the schedule, the member loop, multi-worker training, tuning, NIH pretraining."""
