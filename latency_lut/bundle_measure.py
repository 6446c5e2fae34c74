"""Time a latency-table bundle on this device: `python measure.py` inside the bundle folder.

Needs only numpy and the runtime named in manifest.json: onnxruntime, or coremltools on macOS. Not torch, and not
the efficientvit-nas package: copy the bundle folder to the device (a phone's companion Mac, a Raspberry Pi, an
Android board with Python) and run it there.

    python measure.py                 # times every model; resumable: run it again after an interruption
    python measure.py --threads 4     # override the thread count recorded in the manifest

The method is efficientvit-nas's interleaved one. Models are timed in the groups the manifest lists (a layer row's
two chains always together): each model of a group gets `warmup` untimed runs, then `rounds` rounds in which every
model runs `runs_per_round` times back to back, in a freshly shuffled order each round. A chunk of groups is
measured `passes` times, so that a slow period of the device biases one pass only. Each model's figure per pass is
the `percentile` of its timings. Every group also times the bundle's sentinel model: a pass in which it ran more
than `gate_pct` % slower than its recent median, and beyond its own scatter, is measured again after a pause (the
host gate; the printed summary says how often), and with `normalize` in the manifest every model of a pass is read
against the sentinel (divided by its reading / its recent median; the `host` column keeps that factor, so the
timing as measured is ms x host). Each finished chunk is appended to timings.csv at once (with the
device's name and the runtime versions), so an interrupted run loses at most the chunk in flight and resumes after
it.
Back on the machine with efficientvit-nas: `python -m nas.build_lut from_bundle=DIR out=lut.csv`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from collections import Counter, deque
from pathlib import Path

FIELDS = ["item", "pass", "ms", "p25_ms", "p75_ms", "runs", "device", "runtime", "threads"]
WRITTEN = [*FIELDS, "host"]  # host: the pass's sentinel / its recent median (1: not read against the sentinel)


def cpu_model() -> str | None:
    """The CPU's model name on Linux (what latency_lut's own backends record too), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def device_name() -> str:
    """The device's name as every LUT records it: the CPU model (Linux), the machine and macOS version (Mac)."""
    if sys.platform == "darwin":
        return f"{platform.machine()} macOS {platform.mac_ver()[0]}"
    return cpu_model() or platform.processor() or platform.machine()


def ort_session(model, threads: int):
    """The one way this project opens an onnxruntime session to time (a bundle here, latency_lut's backend in the
    package): `threads` intra-op threads (0: onnxruntime's default), one inter-op thread, every graph rewrite on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(threads, 0)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


class OnnxRuntime:
    def __init__(self, threads: int):
        import onnxruntime as ort

        self.ort, self.threads = ort, threads
        self.version = f"onnxruntime={ort.__version__}"

    def load(self, path: Path, feed: dict):
        sess = ort_session(str(path), self.threads)
        return lambda: sess.run(None, feed)


class ETMethod:
    """The `forward` of a loaded ExecuTorch program. It holds the program and its bytes: the method points into
    both, and running it after either is freed crashes the process."""

    def __init__(self, program, threads: int):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if threads > 0:
            portable_lib._unsafe_reset_threadpool(threads)
        self.source = program
        self.program = Runtime.get().load_program(program)
        self.method = self.program.load_method("forward")

    def execute(self, inputs):
        return self.method.execute(inputs)


def et_method(program, threads: int) -> ETMethod:
    """The `forward` of an ExecuTorch program (.pte bytes or path), with XNNPACK's thread pool at `threads` (0:
    ExecuTorch's default). The one way this project loads a .pte to time or check it."""
    return ETMethod(program, threads)


def et_version() -> str:
    from importlib.metadata import version

    return f"executorch={version('executorch')}"


class ExecuTorch:
    def __init__(self, threads: int):
        self.threads, self.version = threads, et_version()

    def load(self, path: Path, feed: dict):
        import torch  # ExecuTorch's Python runtime takes torch tensors (the executorch wheel brings torch)

        method = et_method(Path(path), self.threads)
        inputs = [torch.from_numpy(v) for v in feed.values()]
        return lambda: method.execute(inputs)


class CoreML:
    def __init__(self, threads: int):
        if sys.platform != "darwin":
            sys.exit("error: CoreML models predict only on macOS; run this bundle's measure.py on a Mac")
        import coremltools as ct

        self.ct = ct
        self.version = f"coremltools={ct.__version__}"

    def load(self, path: Path, feed: dict):
        model = self.ct.models.MLModel(str(path))
        return lambda: model.predict(feed)


def summarize(samples: list[float], percentile: float = 25.0) -> dict:
    """An item's timings reduced to its statistic (`percentile`), with its p25 and p75 and the number of runs."""
    import numpy as np

    a = np.asarray(samples)
    stats = {"ms": np.percentile(a, percentile), "p25_ms": np.percentile(a, 25), "p75_ms": np.percentile(a, 75)}
    return {**{k: float(v) for k, v in stats.items()}, "runs": len(a)}


def time_runs(run, n: int) -> list[float]:
    """n back-to-back calls, each timed on its own, in ms (CPU runtimes; CUDA times with events instead)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def settled(history: list, pct: float) -> bool:
    """Every item's statistic moved by less than `pct` % in each of the last two rounds: the adaptive-rounds rule,
    here so that this script and latency_lut.measure apply the same one.

    >>> import numpy as np
    >>> settled([np.array([1.0, 2.0]), np.array([1.001, 2.0]), np.array([1.0, 2.01])], 1.0)
    True
    >>> settled([np.array([1.0]), np.array([1.05]), np.array([1.05])], 1.0)
    False
    """
    import numpy as np

    if len(history) < 3:
        return False
    steps = [np.abs(history[-i] - history[-i - 1]) / history[-i] * 100 for i in (1, 2)]
    return bool(all((s < pct).all() for s in steps))


def time_group(runners: dict, group: list, m: dict, rng: random.Random, timer=time_runs) -> dict:
    """One interleaved measurement of a group: warm-up, then shuffled rounds of back-to-back runs, each item's
    timings reduced by `summarize`. The one timing loop: this script's, and latency_lut.measure's in the package."""
    for name in group:
        for _ in range(m["warmup"]):
            runners[name]()
    import numpy as np

    samples: dict = {name: [] for name in group}
    order, history = list(group), []
    for r in range(m["rounds"]):
        rng.shuffle(order)
        for name in order:
            samples[name] += timer(runners[name], m["runs_per_round"])
        if m.get("min_rounds", 0) > 0:  # adaptive: stop once every model's figure has settled (see the manifest)
            history.append(np.array([np.percentile(samples[n], m["percentile"]) for n in group]))
            if r + 1 >= m["min_rounds"] and settled(history, m["settle_pct"]):
                break
    return {name: summarize(s, m["percentile"]) for name, s in samples.items()}


SENTINEL = "sentinel"  # the host gate's item, timed in every group (a bundle's models/sentinel.*)


class Gate:
    """The host gate (latency_lut/measure.py's module doc) and what it did: group passes timed, those that ran slow,
    those measured again (slow passes of groups with at least half their passes slow: the other slow passes the
    combination of passes drops), and those still slow after the last retry (kept: their fastest try).

    A pass is slow when its sentinel reading lies above `limit()`: more than `pct` % above the median of the
    sentinel's readings of the last `window_s` seconds (each pass's first try), and above their upper Tukey fence
    (q3 + 1.5 IQR, from 8 readings on), so that a sentinel whose own readings scatter by more than `pct` % (few
    timed runs, a jittery runtime) does not send every other pass back to be measured again. The median, not the
    fastest reading, is the reference: one lucky reading would otherwise set the bar for every later pass.

    >>> g = Gate({"gate_pct": 10})
    >>> for k, ms in enumerate([1.00, 1.02, 0.98, 1.01, 0.99, 1.00, 1.03, 0.97]):
    ...     g.note(ms, now=float(k))
    >>> round(g.limit(now=8.0), 3)  # steady readings: 10% above their median
    1.1
    >>> for k, ms in enumerate([0.8, 1.2, 0.9, 1.1, 1.0, 0.85, 1.15, 1.05]):
    ...     g.note(ms, now=1000.0 + k)  # the steady ones leave the window
    >>> round(g.limit(now=1008.0), 3)  # scattered readings: q3 1.1125 + 1.5 * IQR 0.225
    1.45
    """

    def __init__(self, m: dict):
        self.pct, self.retries = float(m.get("gate_pct", 0.0)), int(m.get("gate_retries", 0))
        self.wait_s, self.window_s = float(m.get("gate_wait_s", 0.25)), float(m.get("gate_window_s", 300.0))
        self.passes = self.slow = self.remeasured = self.still_slow = 0
        self.readings: deque = deque()  # (time, sentinel ms) within the window

    def note(self, ms: float, now: float | None = None) -> None:
        """Record one sentinel reading (`now`: its time in seconds, default time.monotonic())."""
        self.readings.append((time.monotonic() if now is None else now, ms))

    def limit(self, now: float | None = None) -> float:
        """The slowest sentinel reading that passes (class doc), over the last `window_s` seconds' readings (always
        counting the latest 8)."""
        import numpy as np

        now = time.monotonic() if now is None else now
        while len(self.readings) > 8 and now - self.readings[0][0] > self.window_s:
            self.readings.popleft()
        ms = np.array([r for _, r in self.readings])
        q1, median, q3 = np.percentile(ms, [25, 50, 75])
        fence = q3 + 1.5 * (q3 - q1) if len(ms) >= 8 else 0.0  # fewer readings cannot tell their scatter
        return float(max(median * (1 + self.pct / 100), fence))

    def median(self) -> float:
        """The median of the sentinel's readings in the window (as `limit` last trimmed it): the host's recent
        typical speed, which `measure_chunk` reads every pass against when it normalizes."""
        import numpy as np

        return float(np.median([r for _, r in self.readings]))

    def describe(self) -> str:
        if not self.passes:
            return "host gate: off"
        return (
            f"host gate: {self.slow} of {self.passes} group passes ran slow (sentinel > {self.pct:g}% over its "
            f"median); {self.remeasured} of them, in groups with at least half their passes slow, were measured again; "
            f"{self.still_slow} stayed slow after the last retry"
        )


def measure_chunk(
    chunk: list, runners: dict, m: dict, rng: random.Random, timer=time_runs, sentinel=None, gate: Gate | None = None
) -> dict:
    """Every pass of every group of one chunk, {(pass, group index): {item: stats}}: `m["passes"]` passes over the
    chunk's groups, so that the passes of one group are apart in time. With a `sentinel` runner and a `gate` whose
    pct > 0, every group also times the sentinel, and the passes whose sentinel read above `gate.limit()`, of
    groups with at least half their passes so slow, are measured again after a pause (doubling), at most `retries`
    times, keeping the fastest try. With `m["normalize"]` too, every item of a pass is then read against the
    sentinel (`normalize`)."""
    gated = sentinel is not None and gate is not None and gate.pct > 0
    runners = {**runners, SENTINEL: sentinel} if gated else runners

    def timed(g: int) -> dict:
        group = list(chunk[g]) + [SENTINEL] if gated else list(chunk[g])
        return time_group(runners, group, m, rng, timer)

    passes = max(int(m["passes"]), 1)
    done = {(q, g): timed(g) for q in range(passes) for g in range(len(chunk))}
    if not gated:
        return done
    for k in done:  # the window holds first tries only: retries, aimed at slow periods, would bias it slow
        gate.note(done[k][SENTINEL]["ms"])
    limit = gate.limit()

    def slow() -> list:
        return [k for k in done if done[k][SENTINEL]["ms"] > limit]

    def todo(slow: list) -> list:
        """The `slow` passes of groups with at least half their passes slow: a group's median pass (a row's figure)
        is then slow too. One slow pass of three is left to the combination, which drops it."""
        per_group = Counter(g for _, g in slow)
        return [k for k in slow if 2 * per_group[k[1]] >= passes]

    ref = gate.median()  # the host's recent typical speed, as the sentinel reads it (first tries only)
    first = slow()
    left = todo(first)
    gate.passes += len(done)
    gate.slow += len(first)
    gate.remeasured += len(left)
    for attempt in range(gate.retries):
        if not left:
            break
        time.sleep(gate.wait_s * 2**attempt)  # let the slow period pass
        for k in left:
            again = timed(k[1])
            if again[SENTINEL]["ms"] < done[k][SENTINEL]["ms"]:
                done[k] = again
        left = todo(slow())
    gate.still_slow += len(left)
    return normalize(done, ref) if m.get("normalize", False) else done


def normalize(done: dict, ref: float) -> dict:
    """Each pass's items read against its sentinel: divided by `host` = sentinel reading / `ref` (the sentinel's
    recent median), so that a pass timed while the whole host ran x% slow reads as if it had run at the host's
    typical speed. `host` is kept in each item's statistics; times it gives the reading back.

    >>> done = {(0, 0): {"a": {"ms": 2.4, "p25_ms": 2.4, "p75_ms": 3.0, "runs": 5}, SENTINEL: {"ms": 1.2}}}
    >>> normalize(done, 1.0)[(0, 0)]["a"]
    {'ms': 2.0, 'p25_ms': 2.0, 'p75_ms': 2.5, 'runs': 5, 'host': 1.2}
    """
    out = {}
    for k, stats in done.items():
        host = stats[SENTINEL]["ms"] / ref
        out[k] = {
            item: st
            if item == SENTINEL
            else {**st, **{c: st[c] / host for c in ("ms", "p25_ms", "p75_ms")}, "host": host}
            for item, st in stats.items()
        }
    return out


def done_items(path: Path, passes: int) -> set[str]:
    """Items with all their passes in timings.csv already (a resumed run skips their chunks)."""
    if not path.is_file():
        return set()
    counts: dict[str, int] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            counts[row["item"]] = counts.get(row["item"], 0) + 1
    return {k for k, n in counts.items() if n >= passes}


def append_rows(path: Path, rows: list[dict]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, WRITTEN)
        if new:
            w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    import numpy as np

    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(here), help="the bundle folder (default: this script's folder)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: the manifest's)")
    a = p.parse_args()
    root = Path(a.bundle)
    manifest = json.loads((root / "manifest.json").read_text())
    m, threads = manifest["measure"], manifest["threads"] if a.threads is None else a.threads
    runtime = {"onnxruntime": OnnxRuntime, "coreml": CoreML, "executorch": ExecuTorch}[manifest["runtime"]](threads)
    items = {it["id"]: it for it in manifest["items"]}
    out = root / "timings.csv"
    done = done_items(out, m["passes"])
    chunks = [manifest["groups"][i : i + m["chunk"]] for i in range(0, len(manifest["groups"]), m["chunk"])]
    todo = [c for c in chunks if not all(name in done for g in c for name in g)]
    device = device_name()
    print(
        f"{len(items)} models in {len(chunks)} chunks on {device} ({runtime.version}, {threads} threads); "
        f"{len(chunks) - len(todo)} chunks already in {out.name}",
        flush=True,
    )
    rng = random.Random(m["seed"])

    def load(entry: dict):
        shape = entry["input"]["shape"]
        feed = {entry["input"]["name"]: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
        return runtime.load(root / entry["file"], feed)

    gate = Gate(m)  # bundles written before the gate have no sentinel: then it is off
    sentinel = load(manifest["sentinel"]) if "sentinel" in manifest and gate.pct > 0 else None
    t_start = time.time()
    for k, chunk in enumerate(todo):
        runners = {name: load(items[name]) for g in chunk for name in g}
        rows = []
        for (q, g), stats in sorted(measure_chunk(chunk, runners, m, rng, time_runs, sentinel, gate).items()):
            for name in chunk[g]:
                row = {"item": name, "pass": q, "host": 1.0, **stats[name], "device": device}
                row["runtime"] = runtime.version
                rows.append({**row, "threads": threads})
        append_rows(out, rows)
        eta = (time.time() - t_start) / (k + 1) * (len(todo) - k - 1)
        print(f"chunk {k + 1}/{len(todo)} done, about {eta:.0f} s to go", flush=True)
    print(gate.describe() if sentinel is not None else "host gate: off (this bundle has no sentinel model)")
    print(f"timings of {len(items)} models in {out}")


if __name__ == "__main__":
    main()
