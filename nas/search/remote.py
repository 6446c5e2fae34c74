"""Keeping the target on a device that is not here: `nas.slim ... bundle=DIR`, then `from_timings=DIR`.

Where `--verify` cannot run (a LUT imported from a device bundle, CoreML on Linux), the candidate states around each
target, the refilled state and the trajectory's first `per_target` states at or below the target, go into a device
bundle (latency_lut/bundle.py) as whole networks, with the LUT's own calibration networks as references. The
bundle's `measure.py` times them on the device, as it times a LUT bundle. Back here, the same search (same
supernet, LUT, targets and seed: it is deterministic) is run with `from_timings=DIR`: every candidate's measured
latency, divided by the device's drift since the LUT was built (the median over the references of now / then), is
compared with its target, and each target emits the best state, by validation loss, that measured at or below it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from latency_lut.bundle import SUFFIX, read_manifest, read_timings, write_bundle
from latency_lut.measure import MeasureConfig, Net
from latency_lut.table import LatencyTable, LUTError, encode_fingerprint, fingerprint
from nas.search.state import SlimState, Step, UnreachableTarget, first_at_or_below, slim_further
from nas.search.verify import Verified
from supernet.supernet import SuperNet

REFERENCE = 100_000  # bundle indices from here on are the LUT's calibration networks


def state_key(state: SlimState) -> str:
    """A state as text, the same for the same state in every run: how a bundle names its candidates.

    >>> state_key(SlimState((("4d", "id"), ("3d",)), (32, 48)))
    '[[["4d", "id"], ["3d"]], [32, 48]]'
    """
    return json.dumps([[list(c) for c in state.choices], list(state.widths)])


def candidates(traj: list[Step], refill: list[Step], target_ms: float, per_target: int = 4) -> list[Step]:
    """The states a target's choice is made among: its refill moves, then the trajectory's first `per_target`
    states at or below it (without repeats)."""
    k = traj.index(first_at_or_below(traj, target_ms))
    out = {s.state: s for s in [*refill, *traj[k : k + per_target]]}
    return list(out.values())


def write_verify_bundle(
    folder: Path,
    table: LatencyTable,
    net: SuperNet,
    per_target: dict[float, list[Step]],
    cfg: MeasureConfig,
    progress: Any = None,
) -> Path:
    """A device bundle of every candidate state (whole fused networks) and the LUT's calibration networks."""
    backend = str(table.meta["backend"])
    if backend not in SUFFIX:
        raise LUTError(f"bundle= is for a LUT measured with {' or '.join(SUFFIX)}; this LUT's backend is {backend}")
    refs = table.networks()
    if not refs:
        raise LUTError(f"{table.source} holds no calibration networks: a remote verification needs them as references")
    states = list(dict.fromkeys(s.state for steps in per_target.values() for s in steps))
    items = [Net(k, net.spec_of(s.choices, s.widths)) for k, s in enumerate(states)]
    items += [Net(REFERENCE + j, spec) for j, (spec, _) in enumerate(refs)]
    spec0 = items[0].spec
    meta = {
        "threads": int(table.meta["threads"]),
        "batch": int(table.meta["batch"]),
        "input_size": table.input_size,
        "fingerprint": encode_fingerprint(fingerprint(spec0, table.width_step or 16)),
        "verify": {
            "lut_sha256_16": table.sha,
            "states": [state_key(s) for s in states],
            "targets": {repr(t): [state_key(s.state) for s in steps] for t, steps in per_target.items()},
            "references_ms": [ms for _, ms in refs],
        },
    }
    return write_bundle(folder, backend, items, spec0, cfg, int(table.meta["batch"]), meta, progress)


def read_verify_timings(folder: Path, table: LatencyTable) -> tuple[dict[str, float], float]:
    """({state key: measured ms with the device's drift removed}, drift) from a measured verify bundle."""
    manifest = read_manifest(folder)
    info = manifest["meta"].get("verify")
    if info is None:
        raise LUTError(f"{folder} is a LUT bundle, not a verify bundle; import it with nas.build_lut from_bundle=")
    if info["lut_sha256_16"] != table.sha:
        raise LUTError(f"{folder} was written for another LUT (sha {info['lut_sha256_16']}, this one {table.sha})")
    df = read_timings(folder, manifest)
    ms = df.groupby("item")["ms"].min().to_dict()  # a whole network keeps its fastest pass, as measured here
    index = {it["id"]: int(it["index"]) for it in manifest["items"]}
    then = info["references_ms"]
    ratios = [ms[i] / then[k - REFERENCE] for i, k in index.items() if k >= REFERENCE]
    drift = float(np.median(ratios))
    return {info["states"][k]: ms[i] / drift for i, k in index.items() if k < REFERENCE}, drift


def pick_measured(steps: list[Step], measured: dict[str, float], target_ms: float) -> Verified:
    """The state with the lowest validation loss among `steps` that measured at or below the target (the larger
    predicted latency breaks a tie).

    >>> s = [Step(k, "a", "", ms, loss, 0.9, 0.0, SlimState(((str(k),),), (16,)), 0)
    ...      for k, (ms, loss) in enumerate([(1.0, 0.30), (0.95, 0.32), (0.9, 0.31)])]
    >>> m = {state_key(x.state): ms for x, ms in zip(s, [1.04, 0.99, 0.93])}
    >>> pick_measured(s, m, 1.0).step.step  # 1.0 predicted measured over; of the two under, the lower loss
    2
    >>> pick_measured(s, m, 0.9)
    Traceback (most recent call last):
    nas.search.state.UnreachableTarget: target 0.9 ms: none of the 3 candidate states measured at or below it ...
    >>> pick_measured(s, {}, 1.0)
    Traceback (most recent call last):
    latency_lut.table.LUTError: the bundle holds no timing for ...: it was written by another search ...
    """
    missing = [s for s in steps if state_key(s.state) not in measured]
    if missing:
        raise LUTError(
            f"the bundle holds no timing for {missing[0].state.describe()}: it was written by another search "
            "(run nas.slim with the same supernet, LUT, targets and seed as when the bundle was written)"
        )
    fits = [s for s in steps if measured[state_key(s.state)] <= target_ms]
    if not fits:
        fastest = min(measured[state_key(s.state)] for s in steps)
        raise UnreachableTarget(
            f"target {target_ms:g} ms: none of the {len(steps)} candidate states measured at or below it on the device "
            f"(the fastest {fastest:.4g} ms); write a bundle with a lower target too"
        )
    best = min(fits, key=lambda s: (s.val_loss, -s.latency_ms))
    skipped = tuple((s.step, measured[state_key(s.state)]) for s in steps if s not in fits)
    return Verified(best, measured[state_key(best.state)], skipped)


def remote_verify(
    cfg_bundle: str | None,
    cfg_from_timings: str | None,
    table: LatencyTable,
    net: SuperNet,
    traj: list[Step],
    refills: dict[float, list[Step]],
    measure_cfg: MeasureConfig,
    extend: Callable[[list[Step]], Step],
    per_target: int = 4,
) -> dict[float, Verified]:
    """`bundle=`: write the candidates and return {} (the predicted states are emitted meanwhile);
    `from_timings=`: each target's best state measured at or below it. The trajectory is first slimmed (`extend`)
    until the smallest target has `per_target` states at or below it, where the space allows."""
    low = traj.index(first_at_or_below(traj, min(refills)))
    while len(traj) - low < per_target and slim_further(traj, extend):
        pass
    cands = {t: candidates(traj, refills[t], t, per_target) for t in refills}
    if cfg_bundle:
        n = len({s.state for steps in cands.values() for s in steps}) + len(table.networks())
        with tqdm(total=n, desc=f"exporting ({table.meta['backend']})", unit="model") as bar:
            folder = write_verify_bundle(Path(cfg_bundle), table, net, cands, measure_cfg, bar)
        print(
            f"wrote verify bundle {folder}: copy it to {table.meta['device']}, run `python measure.py` inside it, "
            f"copy timings.csv back, then re-run this command with from_timings={folder} instead of bundle="
        )
        return {}
    measured, drift = read_verify_timings(Path(cfg_from_timings), table)
    print(f"{cfg_from_timings}: the device ran {(drift - 1) * 100:+.1f}% against the LUT's build (its references)")
    return {t: pick_measured(steps, measured, t) for t, steps in cands.items()}
