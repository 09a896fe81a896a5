"""Training dynamics (issue 20): what each kept checkpoint of a LoRA (or full) run shows, layer by
layer. Each quantity is its own module over the checkpoint stores (acts stores without frame
arrays, ``results/acts/{run}/checkpoints/{checkpoint}.zarr``) or the checkpoint files, with a thin
entry point that writes one tidy table per run and checkpoint. None of them imports torch."""
