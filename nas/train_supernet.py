"""`python -m nas.train_supernet`: train the supernet's weights and its architecture importance alpha, once.

    python -m nas.train_supernet                                   # space=tiny on Fashion-MNIST (CPU, ~10 min)
    python -m nas.train_supernet space=tiny data=digits train.epochs=2 out=runs/sn
    python -m nas.train_supernet resume=runs/sn train.epochs=4     # continue a run
    torchrun --nproc_per_node=2 -m nas.train_supernet ...          # DistributedDataParallel (gloo on CPU)

The run folder holds supernet.pt (weights, alpha, space, config, input size, and full resume state),
metrics.csv (per epoch: loss, train/val accuracy, tau, alpha entropy, stage scores), importance.png,
alpha.yaml (softmax(alpha), MetaPath and stage importance, the derived path) and config.yaml.
"""

from __future__ import annotations

from nas.config import config_main
from nas.errors import run_cli
from nas.training.supernet_run import TrainSupernetConfig, train_supernet

__all__ = ["TrainSupernetConfig", "main", "run"]
run = train_supernet  # the run folder


def main(argv: list[str] | None = None) -> None:
    config_main("train_supernet", TrainSupernetConfig, run, argv, distributed=True)


if __name__ == "__main__":
    run_cli(main)
