"""Activation capture: hook context managers, and (issue 9) the activation-store writer and reader."""
