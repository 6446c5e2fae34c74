"""The search's inputs, each way they can be wrong reported as one line: a supernet checkpoint, the data it was
trained on, a LUT that must price its whole space, and the weights nas.slim emits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from latency_lut.measure import space_rows
from latency_lut.table import LatencyTable, LUTError
from nas.checkpoint import SUPERNET_KIND, WEIGHTS_KIND, CheckpointError, load_checkpoint, load_model_weights
from nas.data import DataConfig
from supernet.arch import ArchSpec
from supernet.errors import UserError
from supernet.model import EfficientViT
from supernet.space import SpaceConfig
from supernet.supernet import SuperNet

log = logging.getLogger(__name__)

SUPERNET_META = ("space", "num_classes", "config.data")  # what nas.slim reads from a supernet's meta


def load_supernet(path: Path) -> tuple[SuperNet, dict[str, Any]]:
    """A supernet checkpoint, each way it can be wrong reported as one line of its own: missing meta keys, a
    space that is not a valid space, a space that cannot build, or weights that do not fit the space."""
    ckpt = load_checkpoint(path, SUPERNET_KIND)
    meta = ckpt.get("meta")
    for key in SUPERNET_META:
        node = meta
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise CheckpointError(f"{path}: its meta lacks {key!r}; not a supernet written by nas.train_supernet")
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: holds no 'model' weights")

    def short(e: Exception) -> str:
        return " ".join(str(e).split())[:160]

    try:
        space = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SpaceConfig), meta["space"]))
    except Exception as e:  # omegaconf's errors: a wrong key or type in the stored space
        raise CheckpointError(f"{path}: its stored space is not a valid space ({short(e)})") from None
    try:
        order = meta.get("channel_order", "importance")  # supernets written before width sampling: importance
        net = SuperNet(space, int(meta["num_classes"]), int(meta.get("in_chans", 3)), channel_order=order)
    except (UserError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: its space {space.name!r} cannot be built ({short(e)})") from None
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        raise CheckpointError(f"{path}: weights do not match its space {space.name!r} ({short(e)})") from None
    net.eval()
    return net, ckpt


def supernet_data_config(ckpt: dict[str, Any]) -> DataConfig:
    """The data configuration a supernet checkpoint was trained with (its held-out split scores the search)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), ckpt["meta"]["config"]["data"]))


def check_lut_covers(table: LatencyTable, net: SuperNet, step: int) -> None:
    """The LUT must price every spec the slimmer can reach: the supernet's block hyper-parameters (the table's
    fingerprint) and every row at the slimmer's width step."""
    if table.input_size != net.spec.input_size:
        raise LUTError(
            f"{table.source} was measured at {table.input_size} px but the supernet's space "
            f"({net.space.name}) is {net.spec.input_size} px"
        )
    table.check_fingerprint(net.spec)
    miss = table.missing_rows(space_rows(net.space, net.num_classes, step))
    if miss:
        raise LUTError(
            f"{table.source} does not cover the supernet's space {net.space.name} "
            f"(widths {net.space.widths}, width step {step}): {len(miss)} rows missing, e.g. {miss[0]}"
        )
    if table.calibration is None:
        log.warning("%s is uncalibrated: targets are compared with the raw sum of its rows", table.source)


def load_weights(path: str | Path) -> tuple[ArchSpec, EfficientViT]:
    """A `weights.pt` written by nas.slim, loaded into `build_model(spec)`."""
    spec, state = load_model_weights(path, kinds=(WEIGHTS_KIND,))
    model = EfficientViT(spec)
    model.load_state_dict(state)
    return spec, model.eval()
