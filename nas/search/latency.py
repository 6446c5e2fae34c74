"""A search state's latency on a LUT: what the slimmer, the baselines and the benchmarks call `latency`."""

from __future__ import annotations

from dataclasses import dataclass

from latency_lut.table import LatencyTable
from nas.search.state import SlimState
from supernet.supernet import SuperNet


@dataclass(frozen=True)
class StateLatency:
    net: SuperNet
    table: LatencyTable

    def __call__(self, s: SlimState) -> float:
        """The LUT's (calibrated) prediction for the state's concrete spec."""
        return self.table.predict(self.net.spec_of(s.choices, s.widths))

    def saving_se(self, a: SlimState, b: SlimState) -> float:
        """The standard error of the predicted latency difference between two states (`difference_se`)."""
        return self.table.difference_se(self.net.spec_of(a.choices, a.widths), self.net.spec_of(b.choices, b.widths))
