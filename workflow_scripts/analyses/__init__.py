"""The analyses over the activation stores, one module each: pure functions over arrays, plus a
thin entry point that reads a store through ``capture.store.CaptureStore`` and writes a tidy table
(one row per layer x quantity, with the run's wildcards as columns) and a figure."""
