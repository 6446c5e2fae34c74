"""A schema's defaults are its YAML's: constructing a config in Python gives what the command composes."""

import dataclasses

import pytest

from nas.config import compose
from nas.data import DataConfig
from nas.training.supernet_run import TrainSupernetConfig
from nas.training.trainer import TrainConfig
from supernet.space import SpaceConfig


@pytest.mark.parametrize(
    "field, schema", [("space", SpaceConfig), ("train", TrainConfig), ("data", DataConfig)], ids=str
)
def test_dataclass_defaults_equal_the_composed_yaml_defaults(field, schema):
    composed = getattr(compose("train_supernet", [], TrainSupernetConfig), field)
    assert dataclasses.asdict(composed) == dataclasses.asdict(schema())
