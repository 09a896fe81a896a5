"""The training dynamics: when, and in which layer, fine-tuning changes the model.

Each lora (and full) run keeps checkpoints while it trains (``workflow_scripts.train.checkpoints``);
:mod:`.plan` says which of them are analysed, :mod:`.capture` captures each one's pooled
activations, and one module per quantity (representation change, readouts, weights, intruder
dimensions) writes a tidy table per checkpoint that :mod:`.summary` turns into onsets and
emergence layers with intervals over seeds and folds (rules/dynamics.smk).
"""
