"""Latency lookup tables: measured block timings on a backend, and `predict(spec, lut)`."""

from latency_lut.table import LatencyTable, LUTError, Row, spec_rows


def predict(spec, lut: LatencyTable) -> float:
    """Predicted latency (ms) of `spec`: the sum of its LUT rows. Pure: builds no model, measures nothing."""
    return lut.predict(spec)


__all__ = ["LatencyTable", "LUTError", "Row", "predict", "spec_rows"]
