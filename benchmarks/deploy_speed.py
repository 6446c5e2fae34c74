"""Deploy speed: our fused EfficientViT against timm's EfficientFormer with the same weights, and L1 against
MobileNetV2, on torch CPU, onnxruntime and ExecuTorch (XNNPACK), batch 1, 224 px; then the same models across
runtimes, side by side in one run.

    python benchmarks/deploy_speed.py                         # l1, l3 and the quickstart's slimmed arch
    python benchmarks/deploy_speed.py --arch runs/slim/X/target_1ms/arch.yaml --threads 1
    python benchmarks/deploy_speed.py --backends torch onnxruntime executorch --across-only

Across runtimes: our fused L1 (224 px) and a slimmed `tiny` model (its own 64 px; `--arch`, or the quickstart's
architecture: depths 0-0-2-1, widths 32-64-96-128, one MB3D) on every backend, all (runtime, model) pairs
interleaved in the same shuffled rounds, so that a slow period of the host hits every runtime alike.

All models of one backend are timed side by side: after warm-up, every round runs each model `--per-round`
times in a freshly shuffled order; each model's 25th percentile over all rounds (the project's statistic,
MeasureConfig.percentile) is reported with its p25-p75 spread. Ratios are taken within one backend. The slimmed
arch is rebuilt at 224 px (its attention bias follows the 7x7 grid); when
timm cannot express it (the `tiny` space's attention is narrower than timm's fixed 32x8), ours is compared
with our own unfused model instead.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.measure import MeasureConfig, measure_interleaved  # noqa: E402
from supernet import build_model  # noqa: E402
from supernet.arch import PRESETS, resolve_arch  # noqa: E402


def contenders(arch: str | None) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {}
    for name in ("l1", "l3"):
        ref = timm.create_model(f"efficientformer_{name}", pretrained=False).eval()
        ours = build_model(PRESETS[name]).eval()
        ours.load_state_dict(ref.state_dict())  # same weights
        models[f"timm efficientformer_{name}"] = ref
        models[f"ours {name} (fused)"] = ours.fuse()
    if arch:
        spec = resolve_arch(arch).replace(input_size=224)
        ours = build_model(spec).eval()
        if spec.timm_incompatibility() is None:
            ref = timm.create_model("efficientformer_l1", pretrained=False, **spec.to_timm_kwargs()).eval()
            ours.load_state_dict(ref.state_dict())
            models["timm slimmed"] = ref
        else:
            unfused = build_model(spec).eval()
            unfused.load_state_dict(ours.state_dict())
            models["ours slimmed (unfused)"] = unfused
        models["ours slimmed (fused)"] = ours.fuse()
    for mb in ("mobilenetv2_100", "mobilenetv2_140"):
        models[f"timm {mb}"] = timm.create_model(mb, pretrained=False).eval()
    return models


QUICKSTART_ARCH = ((32, ()), (64, ()), (96, ("4d", "4d")), (128, ("3d",)))  # README's quickstart result


def slimmed_tiny(arch: str | None):
    """The slimmed `tiny` model at its own input size: `--arch`, or the quickstart's architecture."""
    from nas.config import compose
    from nas.training.supernet_run import TrainSupernetConfig
    from supernet.arch import StageSpec

    if arch:
        return resolve_arch(arch)
    space = compose("train_supernet", [], TrainSupernetConfig).space
    stages = tuple(StageSpec(w, b) for w, b in QUICKSTART_ARCH)
    return space.max_spec(10).replace(stages=stages).validate()


def across_runtimes(a: argparse.Namespace, arch: str | None) -> None:
    torch.manual_seed(0)
    spec = slimmed_tiny(arch)
    models = {"ours l1 (fused)": (build_model(PRESETS["l1"]).eval().fuse(), 224)}
    models["slimmed tiny (fused)"] = (build_model(spec).eval().fuse(), spec.input_size)
    backends = {}
    for name in a.backends:
        backends[name] = make_backend(name, a.threads)
        backends[name].setup()
    pairs = [(b, m) for m in models for b in backends]

    def prepare(pair):
        b, m = pair
        module, size = models[m]
        return backends[b].prepare(module, torch.randn(1, 3, size, size))

    cfg = MeasureConfig(warmup=5, rounds=a.rounds * 2, runs_per_round=a.per_round)
    stats = measure_interleaved(pairs, prepare, make_backend("torch", a.threads), cfg, random.Random(1))
    print(f"\n[across runtimes, one interleaved run: {', '.join(backends)}; {a.threads} thread(s), batch 1]")
    print(f"slimmed tiny: {spec.describe()} at {spec.input_size} px")
    print(f"{'model':<24}{'runtime':<14}{'p25 ms':>11}{'p25-p75 ms':>16}{'/ torch':>9}")
    by = {pair: st for pair, st in zip(pairs, stats)}
    for m in models:
        for b in backends:
            st = by[(b, m)]
            rel = st["ms"] / by[("torch", m)]["ms"] if "torch" in backends else float("nan")
            print(f"{m:<24}{b:<14}{st['ms']:>11.3f}{st['p25_ms']:>8.3f}-{st['p75_ms']:<7.3f}{rel:>9.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="runs/pipeline/slim/target_1ms/arch.yaml", help="a slimmed arch YAML ('' to skip)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "executorch"])
    p.add_argument("--across-only", action="store_true", help="only the across-runtimes comparison")
    a = p.parse_args()
    arch = a.arch if a.arch and Path(a.arch).is_file() else None
    if a.across_only:
        across_runtimes(a, arch)
        return
    models = contenders(arch)
    x = torch.randn(1, 3, 224, 224)
    cfg = MeasureConfig(warmup=3, rounds=a.rounds, runs_per_round=a.per_round)
    print(
        f"batch 1, 224 px, {a.threads} thread(s), {a.rounds} shuffled rounds x {a.per_round} runs; "
        f"torch {torch.__version__}, timm {timm.__version__}; slimmed arch: {arch}"
    )
    for backend_name in a.backends:
        backend = make_backend(backend_name, a.threads)
        backend.setup()
        names = list(models)
        stats = measure_interleaved(names, lambda n, b=backend: b.prepare(models[n], x), backend, cfg, random.Random(0))
        med = {n: s["ms"] for n, s in zip(names, stats)}
        print(f"\n[{backend_name}]")
        print(f"{'model':<32}{'p25 ms':>11}{'p25-p75 ms':>18}")
        for n, st in zip(names, stats):
            spread = f"{st['p25_ms']:.2f}-{st['p75_ms']:.2f}"
            print(f"{n:<32}{st['ms']:>11.2f}{spread:>18}")
        for name in ("l1", "l3"):
            print(f"ours/timm {name}: {med[f'ours {name} (fused)'] / med[f'timm efficientformer_{name}']:.3f}")
        if arch:
            other = "timm slimmed" if "timm slimmed" in med else "ours slimmed (unfused)"
            print(f"ours slimmed (fused) / {other}: {med['ours slimmed (fused)'] / med[other]:.3f}")
        for mb in ("mobilenetv2_100", "mobilenetv2_140"):
            print(
                f"L1 / {mb}: ours (fused) {med['ours l1 (fused)'] / med[f'timm {mb}']:.3f}, "
                f"timm {med['timm efficientformer_l1'] / med[f'timm {mb}']:.3f}"
            )
    print("\n(the paper reports L1 at 1.6 ms on an iPhone 12 with CoreML, as fast as MobileNetV2x1.4: ratio 1.0)")
    across_runtimes(a, arch)


if __name__ == "__main__":
    main()
