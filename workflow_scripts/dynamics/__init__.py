"""Training dynamics: when, and in which layer, LoRA's specialisation appears. A lora (or full)
run keeps its trainable parameters at the checkpoints of ``training.checkpoints``
(``workflow_scripts.train.checkpoints``); this package captures the run's model at each of them
(:mod:`workflow_scripts.dynamics.capture`: the pooled arrays of the acts store, no frames) and
computes, checkpoint by checkpoint and layer by layer, how the representations, the readouts and
the adapted weights move from the initialisation to the final checkpoint."""
