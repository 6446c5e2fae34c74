"""Latency lookup tables: measured block timings on a backend, and `predict(spec, lut)`."""
