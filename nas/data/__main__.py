"""`python -m nas.data data=digits`: load a dataset and print its split sizes (a quick data check)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nas.config import config_main
from nas.data import DataConfig, build_datasets
from nas.errors import run_cli


@dataclass
class DataInfoConfig:
    data: DataConfig = field(default_factory=DataConfig)


def run(cfg: DataInfoConfig) -> None:
    s = build_datasets(cfg.data)
    x, _ = s.train[0]
    print(
        f"{cfg.data.name}: {len(s.train)} train / {len(s.val)} val / {len(s.test)} test, "
        f"{s.num_classes} classes, image {tuple(x.shape)}"
    )


def main(argv: list[str] | None = None) -> None:
    config_main("data_info", DataInfoConfig, run, argv)


if __name__ == "__main__":
    run_cli(main)
