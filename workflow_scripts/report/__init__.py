"""Aggregation across runs: tables, figures and the report."""
