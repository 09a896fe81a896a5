"""The figures' shared vocabulary: what the analyses' per-run figures and the report's figures
both draw with -- the encoder modules in their order, the spectra comparison's labels (the trained
run and its untrained references), their display names and colours, the quantities' symbols and
the paper's panel order.

Light on purpose: constants and a label helper only, no plotting library; the report's registry
and the analyses import it without paying for matplotlib.
"""

from __future__ import annotations

#: The encoder modules LoRA can adapt, in the order tables and figures list them.
MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
#: The comparison's labels: the trained run and its untrained references (their run methods).
TRAINED = "trained"
REFERENCES = ("lora_random", "lora_init")
DISPLAY = {TRAINED: "trained", "lora_random": "untrained (lora_random)", "lora_init": "PEFT init (lora_init)"}
COLOURS = {TRAINED: "#1f77b4", "lora_random": "#d62728", "lora_init": "#2ca02c"}
#: The LoRA quantities' symbols in the paper: U = A·x, V = B·U and their gradients.
SYMBOLS = {"a_out": "U", "b_out": "V", "a_grad": "gU", "b_grad": "gV"}
#: The paper's panel order: (row, column) -> quantity.
PANELS = (("a_out", "LoRA A – activations (U)"), ("a_grad", "LoRA A – gradients (gU)"),
          ("b_out", "LoRA B – activations (V)"), ("b_grad", "LoRA B – gradients (gV)"))


def run_label(method: str) -> str:
    """A run's label in the figures: ``trained`` for a trained LoRA run, else its method."""
    return TRAINED if method == "lora" else method
