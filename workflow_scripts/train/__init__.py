"""Training: models per method, length-bucketed batches, the loop with selection and resume."""
