"""Activation capture: hook context managers, the per-batch passes, the activation stores
(spec, writer, reader) and the entry point that writes a run's stores (docs/activation-store.md)."""
