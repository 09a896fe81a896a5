"""Corpus ingestion: layouts, manifest, audio decoding and cache, folds, the demo corpus."""
