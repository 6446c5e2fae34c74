"""How does this host's speed vary, and does the host gate's sentinel see it? (issue #21 item 3, issue #25)

    python benchmarks/host_noise.py --backend executorch --threads 2 --out benchmarks/results/host_noise_et2
    python benchmarks/host_noise.py --report benchmarks/results/host_noise_et2.json     # the report again
    python benchmarks/host_noise.py --backend torch --threads 1 --set rounds=2 runs_per_round=2 warmup=1 --out X

Twelve calibration-like `tiny` networks at 64 px (latency_lut.sampling.mixed_specs, seed 1000, spread over the size
range) are timed for `--seconds` in groups of 8, exactly as a LUT build times a group (bundle_measure.time_group:
10 warm-up runs, 20 shuffled rounds of 5 back-to-back runs, the 25th percentile; `--set` changes them). Every
group holds the host gate's sentinel (latency_lut.measure.sentinel_spec) and 7 of the other networks drawn at
random. Nothing is re-measured: this records how the host behaves, group after group. Each reading is divided by
that network's fastest reading of the run. Reported:

* the sentinel's and the other networks' slowness (median over a group's 7 networks) at p50, p90 and the maximum;
* the share of groups the gate would re-measure (`Gate.limit` at its defaults, the readings noted a build's chunk at
  a time: `passes` x `chunk` groups), and of those, the share in which the other networks were also more than 10%
  slow (the gate's precision); the share of the other groups in which the others were more than 10% slow all the
  same (what it misses); and the share the gate's first rule re-measured (more than 10% above the fastest reading
  of the window), which took no account of the sentinel's own scatter;
* the longest run of consecutive gated groups, in groups and seconds (how long a slow period lasts).

Output: `OUT.json` (every group's readings and time) and `OUT.txt` (the report, with the CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.bundle_measure import Gate, device_name, time_group  # noqa: E402
from latency_lut.measure import MeasureConfig, network_module, sentinel_spec  # noqa: E402
from latency_lut.sampling import mixed_specs  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402
from supernet.space import SpaceConfig  # noqa: E402

GATE = 0.10  # the host gate's default (measure.gate_pct=10)


def record(backend_name: str, threads: int, seconds: float, seed: int = 0, settings: dict | None = None) -> dict:
    """Groups of the sentinel and 7 of 11 other networks, timed back to back for `seconds` (`settings`: MeasureConfig
    fields to change)."""
    backend = make_backend(backend_name, threads)
    backend.setup()
    specs = mixed_specs(SpaceConfig(), 10, 11, 1000, 16, spread=True)
    names = ["sentinel"] + [f"net{k}" for k in range(len(specs))]
    modules = [network_module(sentinel_spec(specs[0]), 1)] + [network_module(s, 1) for s in specs]
    runners = {n: backend.prepare(*m) for n, m in zip(names, modules)}
    m, rng, groups = dataclasses.asdict(MeasureConfig(**(settings or {}))), random.Random(seed), []
    t0 = time.time()
    while time.time() - t0 < seconds:
        group = ["sentinel"] + rng.sample(names[1:], 7)
        stats = time_group(runners, group, m, rng, backend.time)
        groups.append({"t": time.time() - t0, "ms": {n: stats[n]["ms"] for n in group}})
    run = {"backend": backend_name, "threads": threads, "cpu": device_name(), "seconds": seconds, "groups": groups}
    return {**run, "settings": settings or {}}


def gate_rules(sentinel: list[float], times: list[float], per_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Which readings the gate re-measures (`Gate.limit`) and which its first rule did (fastest reading of the window
    + 10%), the readings noted `per_chunk` at a time as a build notes a chunk's first tries."""
    m = dataclasses.asdict(MeasureConfig())
    gate, window = Gate(m), m["gate_window_s"]
    now, before = np.zeros(len(sentinel), bool), np.zeros(len(sentinel), bool)
    for start in range(0, len(sentinel), per_chunk):
        chunk = range(start, min(start + per_chunk, len(sentinel)))
        for k in chunk:
            gate.note(sentinel[k], now=times[k])
        limit = gate.limit(now=times[chunk[-1]])
        fastest = min(ms for t, ms in gate.readings if times[chunk[-1]] - t <= window) * (1 + m["gate_pct"] / 100)
        now[chunk.start : chunk.stop] = np.array(sentinel[chunk.start : chunk.stop]) > limit
        before[chunk.start : chunk.stop] = np.array(sentinel[chunk.start : chunk.stop]) > fastest
    return now, before


def analyse(run: dict) -> dict[str, float]:
    """The figures of the module doc from one recorded run."""
    groups = run["groups"]
    best: dict[str, float] = {}
    for g in groups:
        for n, ms in g["ms"].items():
            best[n] = min(best.get(n, np.inf), ms)
    sentinel = np.array([g["ms"]["sentinel"] / best["sentinel"] for g in groups])
    others = np.array([np.median([ms / best[n] for n, ms in g["ms"].items() if n != "sentinel"]) for g in groups])
    gated = sentinel > 1 + GATE
    longest, run_len = 0, 0
    for x in gated:
        run_len = run_len + 1 if x else 0
        longest = max(longest, run_len)
    per_group = groups[-1]["t"] / len(groups)
    per_chunk = MeasureConfig().passes * MeasureConfig().chunk
    rule, first = gate_rules([g["ms"]["sentinel"] for g in groups], [g["t"] for g in groups], per_chunk)
    return {
        "groups": len(groups),
        "group_s": per_group,
        "sentinel_p50": float(np.median(sentinel)),
        "sentinel_p90": float(np.percentile(sentinel, 90)),
        "sentinel_max": float(sentinel.max()),
        "others_p50": float(np.median(others)),
        "others_p90": float(np.percentile(others, 90)),
        "others_max": float(others.max()),
        "gated": float(gated.mean()),
        "precision": float((others[gated] > 1 + GATE).mean()) if gated.any() else float("nan"),
        "missed": float((others[~gated] > 1 + GATE).mean()) if (~gated).any() else float("nan"),
        "rule": float(rule.mean()),
        "rule_precision": float((others[rule] > 1 + GATE).mean()) if rule.any() else float("nan"),
        "rule_missed": float((others[~rule] > 1 + GATE).mean()) if (~rule).any() else float("nan"),
        "first_rule": float(first.mean()),
        "per_chunk": per_chunk,
        "longest_groups": longest,
        "longest_s": longest * per_group,
    }


def report(run: dict) -> str:
    f = analyse(run)
    return "\n".join(
        [
            f"host noise: {run['backend']}, {run['threads']} thread(s), tiny networks at 64 px; CPU {run['cpu']}; "
            f"{f['groups']} groups of {f['group_s']:.2f} s over {run['seconds']:.0f} s; measure settings "
            f"{run.get('settings') or 'the defaults'}",
            "slowness = a reading / that network's fastest reading of the run; others = median over a group's 7",
            f"sentinel slowness p50 {f['sentinel_p50']:.3f}, p90 {f['sentinel_p90']:.3f}, max {f['sentinel_max']:.2f}",
            f"others   slowness p50 {f['others_p50']:.3f}, p90 {f['others_p90']:.3f}, max {f['others_max']:.2f}",
            f"gate (> {GATE * 100:.0f}% slow sentinel): {f['gated'] * 100:.1f}% of groups; the others were also "
            f"> {GATE * 100:.0f}% slow in {f['precision'] * 100:.0f}% of those, and in {f['missed'] * 100:.1f}% of "
            f"the groups it passed",
            f"longest slow period: {f['longest_groups']} consecutive gated groups ({f['longest_s']:.1f} s)",
            f"the gate's rule (Gate.limit, {f['per_chunk']} groups a chunk) "
            f"re-measures {f['rule'] * 100:.1f}% of groups; the others were also > {GATE * 100:.0f}% slow in "
            f"{f['rule_precision'] * 100:.0f}% of those, and in {f['rule_missed'] * 100:.1f}% of the groups it passed; "
            f"its first rule (fastest reading + {GATE * 100:.0f}%) re-measured {f['first_rule'] * 100:.1f}%",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="executorch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--out", default=None, help="output prefix (OUT.json, OUT.txt)")
    p.add_argument("--report", default=None, help="report a recorded OUT.json again (no timing)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="measure settings (MeasureConfig)")
    a = p.parse_args()
    if a.report:
        print(report(json.loads(Path(a.report).read_text())))
        return
    fields = {f.name: f.type for f in dataclasses.fields(MeasureConfig)}
    settings = {}
    for item in a.set:
        key, _, value = item.partition("=")
        if key not in fields or not value:
            p.error(f"--set {item}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        settings[key] = float(value) if "float" in str(fields[key]) else int(value)
    run = record(a.backend, a.threads, a.seconds, settings=settings)
    text = report(run)
    print(text)
    if a.out:
        atomic_write_text(Path(a.out).with_suffix(".json"), json.dumps(run))
        atomic_write_text(Path(a.out).with_suffix(".txt"), text + "\n")


if __name__ == "__main__":
    main()
