"""`python -m nas.train arch=PATH`: train a found (or preset) EfficientViT and evaluate it on the test split.

    python -m nas.train arch=runs/slim/X/target_1ms/arch.yaml                  # from scratch (the paper's protocol)
    python -m nas.train arch=runs/slim/X/target_1ms/arch.yaml init=inherited   # fine-tune the slimmer's weights
    python -m nas.train arch=l1 data=digits train.epochs=2                     # a preset at the data's input size
    torchrun --nproc_per_node=2 -m nas.train arch=...                          # DistributedDataParallel

`init=inherited` (our addition, not in the paper) starts from the `weights.pt` that nas.slim wrote beside the
arch YAML. The recipe and its options are nas.training.trainer's, shared with supernet training. The run folder holds
checkpoint.pt (resumable with resume=DIR), metrics.csv, curves.png, config.yaml and metrics.json (test top-1,
params, MACs, LUT-predicted latency).
"""

from __future__ import annotations

from nas.config import config_main
from nas.errors import run_cli
from nas.training.model import TrainModelConfig, train_model

__all__ = ["TrainModelConfig", "main", "run"]
run = train_model  # the run folder; test top-1 and latency are logged and written to its metrics.json


def main(argv: list[str] | None = None) -> None:
    config_main("train", TrainModelConfig, run, argv, distributed=True)


if __name__ == "__main__":
    run_cli(main)
