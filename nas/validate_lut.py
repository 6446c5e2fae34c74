"""`python -m nas.validate_lut lut=PATH.csv samples=40`: does the LUT predict whole networks, and their differences?

    python -m nas.validate_lut lut=runs/lut/X/lut.csv                     # 40 held-out networks, 20 action pairs
    python -m nas.validate_lut lut=luts/tiny_ort.csv independent=true     # also the deployment-style protocol

The method and its statistics are latency_lut/validation.py's (`validate_lut`). This prints its report and
draws validation.png (predicted against measured) beside validation.csv and actions.csv.
"""

from __future__ import annotations

import logging

import pandas as pd

from latency_lut.validation import ValidateLUTConfig, output_dir, validate_lut
from nas.config import config_main
from nas.errors import run_cli
from nas.plots import plot_lut_validation

__all__ = ["ValidateLUTConfig", "main", "run"]
log = logging.getLogger(__name__)


def run(cfg: ValidateLUTConfig) -> pd.DataFrame:
    """Validate, print the report and draw the scatter; returns the held-out networks with the figures in attrs."""
    v = validate_lut(cfg)
    print(v.report())
    df = v.networks
    png = output_dir(cfg) / "validation.png"
    raw, meas, pred = (df[c].to_numpy() for c in ("raw_ms", "measured_ms", "predicted_ms"))
    plot_lut_validation(raw, meas, pred, png, title=v.table.describe())
    log.info("wrote %s", png)
    df.attrs.update(v.figures)
    return df


def main(argv: list[str] | None = None) -> None:
    config_main("validate_lut", ValidateLUTConfig, run, argv)


if __name__ == "__main__":
    run_cli(main)
