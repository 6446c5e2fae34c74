"""Shared test fixtures' building blocks: small spaces, fast measurement settings, and LUTs with hand-set rows
(row i costs exactly i + 1 ms, so any sum is checkable by hand)."""

from collections.abc import Callable, Sequence

import pandas as pd

from latency_lut.measure import space_rows
from latency_lut.table import COLUMNS, LatencyTable, Row, encode_fingerprint, encode_stages, fingerprint
from nas.build_lut import BuildLUTConfig
from nas.config import compose
from supernet.arch import ArchSpec

SMALL_SPACE = [
    "space.depths=[1,1,2,2]",
    "space.widths=[16,16,32,32]",
    "space.input_size=32",
    "space.attention.key_dim=8",
    "space.attention.num_heads=2",
]
FAST = [
    "measure.warmup=1",
    "measure.rounds=2",
    "measure.runs_per_round=2",
    "measure.interleave=4",
    "measure.passes=2",
    "calibration_networks=4",
]


def fake_table(rows: list[Row], **meta) -> pd.DataFrame:
    """A LUT whose row i costs exactly i + 1 ms (so any sum is checkable by hand)."""
    m = {
        "backend": "torch",
        "device": "test",
        "versions": "torch=x",
        "threads": 1,
        "batch": 1,
        "input_size": 32,
        **meta,
    }
    return pd.DataFrame(
        [
            {
                "kind": r.kind,
                "stage": r.stage,
                "in_width": r.in_width,
                "width": r.width,
                "resolution": r.resolution,
                "ms": i + 1.0,
                "p25_ms": i + 0.5,
                "p75_ms": i + 1.5,
                "runs": 10,
                **m,
            }
            for i, r in enumerate(rows)
        ]
    )[COLUMNS]


def small_space():
    return compose("build_lut", SMALL_SPACE, BuildLUTConfig).space


def table_with_networks(
    specs: Sequence[ArchSpec], measured: Callable[[float], float], visits: Sequence[float] = (1.0,), call: float = 0.0
) -> tuple[LatencyTable, list[ArchSpec]]:
    """The fake table of `small_space()` with a `call` row and `specs` as calibration networks: network k on visit
    v measures `measured(raw_k) * visits[v]`, raw_k being its rows' sum plus the call."""
    space = small_space()
    fp = encode_fingerprint(fingerprint(space.max_spec(10), 16))
    df = fake_table(space_rows(space, 10)).assign(fingerprint=fp, arch="")
    plain = LatencyTable(df)
    extra = [dict(df.iloc[0], kind="call", stage=0, in_width=0, width=0, resolution=0, ms=call)]
    for k, s in enumerate(specs):
        ms = measured(plain.raw(s) + call)
        for v, f in enumerate(visits):
            extra.append(dict(df.iloc[0], kind="net", stage=3, in_width=k, width=v, ms=ms * f, arch=encode_stages(s)))
    return LatencyTable(pd.concat([df, pd.DataFrame(extra)], ignore_index=True)), list(specs)
