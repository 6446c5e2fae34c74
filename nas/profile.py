"""`python -m nas.profile arch=l1`: parameter and MAC counts of a preset or an arch YAML.

    python -m nas.profile arch=l3
    python -m nas.profile arch=runs/slim/target_1.6ms/arch.yaml input_size=64

The counting rule is in `supernet/complexity.py` and the README.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.config import config_main
from nas.errors import run_cli
from supernet.arch import resolve_arch
from supernet.complexity import complexity_table


@dataclass
class ProfileConfig:
    arch: str = "l1"  # a preset (l1, l3, l7) or an arch YAML path
    input_size: int = 0  # 0: the spec's own input size


def run(cfg: ProfileConfig) -> str:
    spec = resolve_arch(cfg.arch)
    if cfg.input_size:
        spec = spec.replace(input_size=cfg.input_size).validate()
    table = complexity_table(spec, f"arch {cfg.arch}")
    print(table)
    return table


def main(argv: list[str] | None = None) -> None:
    config_main("profile", ProfileConfig, run, argv)


if __name__ == "__main__":
    run_cli(main)
