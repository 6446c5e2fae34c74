"""`python -m nas.build_lut`: measure block latencies on a backend and write a LUT CSV.

    python -m nas.build_lut                                         # space=tiny, backend=torch, 1 thread
    python -m nas.build_lut space=tiny backend=onnxruntime out=luts/tiny_ort.csv
    python -m nas.build_lut backend=coreml convert_only=true        # CoreML compatibility check (any OS)

Re-running with the same `out=` skips rows already in the CSV (resume). The method is in latency_lut/measure.py:
the backend's per-call overhead (the `call` row, the empty chain), every layer row (as the difference of two
chains of the network's own layers) and `calibration_networks` whole networks spanning the space's latency range,
together in shuffled interleaved groups. The table fits its correction on the whole networks
(latency_lut/correction.py). The library call is `latency_lut.build.build_lut(cfg)`.
"""

from __future__ import annotations

from pathlib import Path

from latency_lut.build import BuildLUTConfig, build_lut, fit_report
from latency_lut.table import LatencyTable
from nas.config import config_main
from nas.errors import run_cli

__all__ = ["BuildLUTConfig", "main", "run"]


def run(cfg: BuildLUTConfig) -> Path:
    out = build_lut(cfg)
    if out.suffix == ".csv" and not (cfg.backend == "coreml" and cfg.convert_only):
        print(fit_report(LatencyTable.load(out)))
    print(out)
    return out


def main(argv: list[str] | None = None) -> None:
    config_main("build_lut", BuildLUTConfig, run, argv)


if __name__ == "__main__":
    run_cli(main)
