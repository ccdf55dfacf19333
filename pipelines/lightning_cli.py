"""LightningCLI for diffsr configs: derived values are linked, never repeated by hand.

Two links join a config's ``model`` and ``data``:

- **channels, data -> model** (on parse). The datamodule's class says how many channels its batches
  have from its own arguments (``model_channels``: an image's ``channels``, a raster's ``bands``,
  an MRI slab's ``2 n + 1`` planes); that count becomes the denoiser's ``channels`` (``DiffusionSR``)
  or the autoencoder's ``channels`` (``AutoencoderModule``). A config gives it on the data side only.
- **multiple, model -> data** (on instantiation). Once the model is built, the sizes it takes are
  known: multiples of the network's downsampling times the state space's stride (a latent space's
  stride comes from its autoencoder checkpoint) and of every axis's operator factor. That number
  becomes the datamodule's ``multiple`` (the size its crops, patches or windows are cut to).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

#: where the data's channel count goes, for each kind of model (a link whose target is absent
#: from the chosen model class is skipped)
CHANNEL_TARGETS = ("model.init_args.denoiser.init_args.channels", "model.init_args.channels")
#: where the model's size multiple goes
MULTIPLE_TARGET = "data.init_args.multiple"


def data_channels(data: Namespace) -> int:
    """Channels of the batches the datamodule named by ``data`` (``class_path``, ``init_args``) yields.

    Asks the class's ``model_channels(**init_args)``; a datamodule without one cannot be linked.
    """
    module, _, name = str(data.class_path).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    fn = getattr(cls, "model_channels", None)
    if fn is None:
        raise ValueError(f"{data.class_path} has no model_channels(**init_args): it cannot tell the model its channels")
    init_args = data.get("init_args")
    kwargs = init_args.as_dict() if isinstance(init_args, Namespace) else dict(init_args or {})
    return int(fn(**kwargs))


def size_multiple(model: pl.LightningModule) -> int:
    """Spatial sizes ``model`` takes are multiples of this (on every axis).

    ``DiffusionSR``: the network's downsampling times the state space's stride, and every factor
    of the operator (the low resolution is the high one divided by them). A stage-1 autoencoder:
    its stride. Anything else: 1.
    """
    denoiser, space = getattr(model, "denoiser", None), getattr(model, "space", None)
    if denoiser is not None:
        m = int(denoiser.multiple) * int(getattr(space, "stride", 1))
    else:
        m = int(getattr(model, "stride", 1))
    operator = getattr(model, "operator", None)
    for f in getattr(operator, "factors", ()):
        m = math.lcm(m, int(f))
    return m


def _plain(key: str) -> str:
    return key.replace(".init_args.", ".")


def given_link_targets(args: list[str]) -> list[str]:
    """The linked keys that ``args`` (or the ``--config`` files it names) set by hand.

    jsonargparse accepts a value for a key inside a subclass's ``init_args`` that a link targets,
    then overwrites it; refusing it says so instead of ignoring the user.
    """
    import yaml

    targets = {_plain(t): t for t in (*CHANNEL_TARGETS, MULTIPLE_TARGET)}
    found: list[str] = []
    for i, arg in enumerate(args):
        if not arg.startswith("--") and arg != "-c":
            continue
        key, eq, value = arg[2:].partition("=")
        key = "config" if arg == "-c" else key
        if _plain(key) in targets:
            found.append(targets[_plain(key)])
        elif key == "config" and (eq or i + 1 < len(args)):
            path = Path(value if eq else args[i + 1])
            cfg = yaml.safe_load(path.read_text()) if path.is_file() else None
            for target in targets.values():
                node: Any = cfg
                for part in target.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if node is not None:
                    found.append(f"{target} (in {path})")
    return found


class DiffusionCLI(LightningCLI):
    """``LightningCLI`` with the links above (model and data in subclass mode: any ``class_path``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for target in CHANNEL_TARGETS:
            parser.link_arguments("data", target, compute_fn=data_channels, apply_on="parse")
        parser.link_arguments("model", MULTIPLE_TARGET, compute_fn=size_multiple, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (list, tuple)):
            given = given_link_targets([str(a) for a in args])
            if given:
                source = (
                    "the model (its network's downsampling, its state space's stride and its scale)"
                    if given[0].startswith(MULTIPLE_TARGET)
                    else "the data (set its channels, bands or slicewise_neighbours instead)"
                )
                parser.error(f"{given[0]} is not given but linked from {source}")
        super().parse_arguments(parser, args)
        # resuming (``--ckpt_path``) loads tensors and plain data only, as every diffsr load does:
        # a checkpoint never executes code (``--weights_only false`` to read a foreign one)
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("weights_only", False) is None:
            self.config[sub]["weights_only"] = True


def build_cli(args: list[str], run: bool = True, **kwargs: Any) -> DiffusionCLI:
    """The diffsr LightningCLI over ``args`` (``fit --config ...``; without a subcommand when ``run`` is False)."""
    return DiffusionCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        **kwargs,
    )
