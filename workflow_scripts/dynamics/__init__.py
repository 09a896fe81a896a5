"""Training dynamics: what changes in a LoRA run between its kept checkpoints (issue 20)."""
