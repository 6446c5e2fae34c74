"""`python -m nas.profile arch=l1`: parameter and MAC counts of a preset or an arch YAML.

    python -m nas.profile arch=l3
    python -m nas.profile arch=runs/slim/target_1.6ms/arch.yaml input_size=64

The counting rule is in `supernet/complexity.py` and the README.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from nas.config import compose
from nas.errors import run_cli
from supernet.arch import resolve_arch


@dataclass
class ProfileConfig:
    arch: str = "l1"  # a preset (l1, l3, l7) or an arch YAML path
    input_size: int = 0  # 0: the spec's own input size


def profile_table(arch: str, input_size: int = 0) -> str:
    from supernet import build_model
    from supernet.complexity import count_macs, count_params

    spec = resolve_arch(arch)
    if input_size:
        spec = spec.replace(input_size=input_size).validate()
    model = build_model(spec)
    macs = count_macs(model, spec.input_size, spec.in_chans)
    rows = [f"arch {arch}: input {spec.input_size}px, depths {spec.depths}, widths {spec.widths}, MB3D {spec.num_3d}"]
    rows.append(f"{'part':<10}{'params':>12}{'MACs':>12}")
    parts = [(p, m) for p, m in model.named_children() if p != "stages"]
    parts[1:1] = [(f"stages.{i}", stage) for i, stage in enumerate(model.stages)]  # right after the stem
    for part, module in parts:
        n, m = count_params(module), macs.get(part, 0)
        if n or m:
            rows.append(f"{part:<10}{n / 1e6:>11.2f}M{m / 1e9:>11.3f}G")
    rows.append(f"{'total':<10}{count_params(model) / 1e6:>11.2f}M{sum(macs.values()) / 1e9:>11.3f}G")
    rows.append("MACs: conv + linear + attention matmuls at batch 1; BN/LN/activations/pooling/softmax not counted")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    cfg = compose("profile", sys.argv[1:] if argv is None else argv, ProfileConfig)
    print(profile_table(cfg.arch, cfg.input_size))


if __name__ == "__main__":
    run_cli(main)
