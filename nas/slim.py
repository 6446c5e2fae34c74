"""`python -m nas.slim --target-ms 1.6`: slim a trained supernet to latency targets and emit EfficientViT configs.

    python -m nas.slim --target-ms 1.0                        # the newest supernet.pt and lut.csv under runs/
    python -m nas.slim --target-ms 0.6 0.8 1.0 --supernet runs/supernet/X/supernet.pt --lut luts/tiny.csv --out D
    python -m nas.slim --target-ms 1.0 val_images=1000 bn_batches=2 mb3d_action=mb4d   # hydra overrides
    python -m nas.slim --target-ms 1.0 0.8 --verify           # measure what is emitted; keep the target measured
    python -m nas.slim --target-ms 1.0 method=paper           # the paper's rule (Section 4.2, defects fixed)

One slimming trajectory serves every target: each target's config is the first state at or below it, then (with
`method=default`) refilled with the latency left under the target (nas/search/slimmer.py explains both rule
sets). Latency comes from the LUT's (calibrated) prediction, quality from the supernet restricted to each
candidate (its weights physically sliced, BN statistics re-estimated on training batches): its cross-entropy on
the held-out validation split, with top-1 reported beside it.

`--verify` measures each emitted architecture (the whole fused network, in interleaved rounds) on the LUT's
backend and settings, when that backend runs on this machine. A state that measures above its target is passed
over for the next trajectory state that measures at or below it (slimming further if the trajectory ends), and
the output says so; `arch.yaml` records `measured_ms` beside `predicted_ms`. Where the backend cannot run here
(CoreML on Linux, a LUT from another device), it says so in one line and emits the predicted state. There, measure
on the device instead (nas/search/remote.py):

    python -m nas.slim --target-ms 1.0 0.8 --lut luts/pi.csv bundle=verify-pi     # candidates -> bundle
    (on the device: cd verify-pi && python measure.py; copy timings.csv back)
    python -m nas.slim --target-ms 1.0 0.8 --lut luts/pi.csv from_timings=verify-pi

Outputs (written to a staging folder and moved into --out only when complete):
    target_<T>ms/arch.yaml, target_<T>ms/weights.pt, trajectory.csv, pareto.png, config.yaml
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from nas.config import OneLineParser, compose, setup_logging
from nas.errors import run_cli
from nas.search.slimming import SlimConfig, slim
from supernet.errors import UserError

__all__ = ["SlimConfig", "main", "run"]
log = logging.getLogger(__name__)


def newest(pattern: str, root: Path = Path("runs")) -> list[Path]:
    return sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)


def pick_inputs(cfg: SlimConfig) -> tuple[Path, Path]:
    """The supernet and LUT paths, defaulting to the newest run outputs (and saying which were picked)."""
    if cfg.supernet:
        sn = Path(cfg.supernet)
        sn = sn / "supernet.pt" if sn.is_dir() else sn
    else:
        found = newest("**/supernet.pt")
        if not found:
            raise UserError(
                "no supernet given and none found under runs/; run python -m nas.train_supernet "
                "first or pass --supernet PATH"
            )
        sn = found[0]
        log.info("using the newest supernet: %s", sn)
    if cfg.lut:
        return sn, Path(cfg.lut)
    found = newest("**/lut.csv")
    if not found:
        raise UserError("no LUT given and none found under runs/; run python -m nas.build_lut first or pass --lut")
    log.info("using the newest LUT: %s", found[0])
    return sn, found[0]


def run(cfg: SlimConfig) -> Path:
    sn_path, lut_path = pick_inputs(cfg)
    result = slim(cfg, sn_path, lut_path)
    print(result.summary())
    print(f"{result.steps} steps, {result.evaluations} evaluations, {result.wall_s:.1f} s; outputs in {result.out}")
    return result.out


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str]) -> list[str]:
    """Turn the documented --flags into hydra overrides; key=value arguments pass through."""
    p = OneLineParser(prog="python -m nas.slim", description=__doc__.split("\n\n")[0])
    p.add_argument("--target-ms", nargs="+", type=float, metavar="MS", help="latency target(s) in ms")
    p.add_argument("--supernet", help="supernet.pt or its run folder (default: the newest supernet.pt under runs/)")
    p.add_argument("--lut", help="LUT CSV (default: the newest lut.csv under runs/)")
    p.add_argument("--out", help="output folder (default: runs/slim/<timestamp>)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="measure each emitted architecture on the LUT's backend; if over its target, emit the next state "
        "that is not",
    )
    p.add_argument("overrides", nargs="*", help="hydra overrides for search_configs/slim.yaml, e.g. val_images=1000")
    # key=value arguments are overrides wherever they stand: argparse alone would read the one after
    # `--target-ms 1.6` as another target (the value of --supernet/--lut/--out stays that flag's, '=' or not)
    paths = ("supernet", "lut", "out")  # the flags that take a value
    keyed = [
        i
        for i, t in enumerate(argv)
        if "=" in t and not t.startswith("-") and (i == 0 or argv[i - 1] not in {f"--{k}" for k in paths})
    ]
    a = p.parse_args([t for i, t in enumerate(argv) if i not in keyed])
    overrides = [argv[i] for i in keyed] + list(a.overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        p.error(f"unrecognized argument {bad[0]!r}; overrides look like key=value")
    if a.target_ms is not None:
        overrides.append(f"target_ms=[{','.join(repr(t) for t in a.target_ms)}]")
    for key in paths:
        if getattr(a, key) is not None:
            overrides.append(f"{key}={getattr(a, key)}")
    if a.verify:
        overrides.append("verify=true")
    return overrides


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = compose("slim", overrides, SlimConfig)
    run(cfg)


if __name__ == "__main__":
    run_cli(main)
