"""Hydra config composition shared by every entry point.

Entry points use hydra's compose API rather than `@hydra.main`: it lets the documented `--flag` fronts
(`python -m nas.slim --target-ms 1.6`) turn flags into overrides, and keeps hydra from changing the working
directory or writing its own log folders.

Each primary config `search_configs/<name>.yaml` is backed by a dataclass schema that `compose` stores in
hydra's ConfigStore as `<name>_schema`. Its defaults list names that schema first, then `_self_`, then the
config groups (so groups override the primary's values). Because the schema is the base, a misspelt key, an
unknown group option or a value of the wrong type is an error, and any schema key can be overridden even
when no YAML mentions it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from supernet.errors import ConfigError

__all__ = ["ConfigError", "compose", "config_main", "to_yaml"]

CONFIG_MODULE = "search_configs"  # a package: its YAML files ship in the wheel (setup.cfg package_data)
T = TypeVar("T")


def compose(config_name: str, overrides: list[str], schema: type[T]) -> T:
    """Compose `search_configs/<config_name>.yaml` with `overrides` and return it as a `schema` instance."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    ConfigStore.instance().store(name=f"{config_name}_schema", node=schema)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split())  # hydra messages span lines; keep one
        raise ConfigError(f"config: {msg}") from None
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, for a run folder."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_yaml(node)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(message)s")


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage and then the error; every entry point promises one `error:` line."""

    def error(self, message: str) -> None:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def config_main(
    config_name: str,
    schema: type[T],
    run: Callable[..., Any],
    argv: list[str] | None = None,
    distributed: bool = False,
) -> None:
    """The `main` of every entry point whose arguments are all hydra overrides: compose its config from `argv`
    (default: the command line) and call `run` with it. `--help` prints the config keys with their defaults.

    `distributed` (the training commands): join torchrun's process group if there is one, log on rank 0 only,
    call `run(cfg, dist_info)`, and always leave the group."""
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        prog = spec.name.removesuffix(".__main__") if spec is not None else f"nas.{config_name}"
        print(f"usage: python -m {prog} [key=value ...]   (hydra overrides; the config and its defaults below)\n")
        print(to_yaml(compose(config_name, [], schema)))
        return
    if not distributed:
        setup_logging()
        run(compose(config_name, argv, schema))
        return
    from nas.training.trainer import distributed_session

    with distributed_session() as dist_info:
        setup_logging(logging.INFO if dist_info.is_main else logging.WARNING)
        run(compose(config_name, argv, schema), dist_info)
