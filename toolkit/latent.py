"""Latent state space: diffusion in the latent of a frozen autoencoder (Rombach et al., 2022, LDM).

Stage 1 (:mod:`toolkit.autoencoder`) trains the autoencoder on the high-resolution data; stage 2
trains ``DiffusionSR`` with a :class:`LatentSpace` over it. The latent lives on a grid ``stride``
times coarser than the image, so a network step costs about ``stride**d`` times less.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from toolkit.spaces import StateSpace, register_space
from toolkit.tiling import gaussian_weight, tile_starts
from toolkit.utils import upsample


class TileLayout:
    """Overlapping tiles on a (latent) grid and their blending weights at any resolution.

    A tile's weight is a Gaussian peaking at its centre (:func:`toolkit.tiling.gaussian_weight`),
    set to zero within ``overlap // 2`` of every tile edge that lies inside the grid: there a
    network run on the tile alone sees its zero padding, and the neighbouring tile, which
    overlaps by at least ``overlap``, covers those positions with its interior.

    Args:
        grid: the grid's shape.
        tile: tile size per axis (clipped to the grid).
        overlap: minimum overlap of neighbouring tiles.
    """

    def __init__(self, grid: Sequence[int], tile: int, overlap: int) -> None:
        self.grid = [int(n) for n in grid]
        self.size = [min(int(tile), n) for n in self.grid]
        self.boxes = list(itertools.product(*(tile_starts(n, t, overlap) for n, t in zip(self.grid, self.size))))
        self.margin = int(overlap) // 2
        self._norms: dict[tuple[int, torch.device], torch.Tensor] = {}

    def window(self, box: tuple[int, ...], r: int) -> tuple[slice, ...]:
        """The tile at ``box`` on the grid refined ``r`` times."""
        return tuple(slice(s * r, (s + t) * r) for s, t in zip(box, self.size))

    def weight(self, box: tuple[int, ...], r: int, device: torch.device) -> torch.Tensor:
        """Blending weight ``(*size * r)`` of the tile at ``box`` (float64)."""
        w = gaussian_weight([t * r for t in self.size], device=device).double()
        m = self.margin * r
        for axis, (s, t, n) in enumerate(zip(box, self.size, self.grid)):
            edge = [slice(None)] * len(self.size)
            if s > 0:
                edge[axis] = slice(0, m)
                w[tuple(edge)] = 0
            if s + t < n:
                edge[axis] = slice(t * r - m, t * r)
                w[tuple(edge)] = 0
        return w

    def share(self, box: tuple[int, ...], r: int, device: torch.device) -> torch.Tensor:
        """The tile's weight over the summed weights of all tiles: its part of each position, at refinement ``r``."""
        key = (r, torch.device(device))
        if key not in self._norms:
            norm = torch.zeros([n * r for n in self.grid], device=device, dtype=torch.float64)
            for b in self.boxes:
                norm[self.window(b, r)] += self.weight(b, r, device)
            self._norms[key] = norm
        return self.weight(box, r, device) / self._norms[key][self.window(box, r)]


class _Collected(Exception):
    """Ends a tile's forward pass once the statistics being gathered are in."""


class _GroupNormSync:
    """Image-wide GroupNorm statistics for a network run tile by tile.

    GroupNorm normalises with statistics over the whole spatial extent, so a tile alone would
    normalise with its own and come out different from one pass (and tiles differently from each
    other: colour shifts). The statistics are therefore gathered first, one layer at a time in
    execution order: pass ``k`` runs every tile with layers ``< k`` normalised by the image-wide
    statistics already known and stops at layer ``k``, whose mean and variance per
    ``(sample, group)`` it accumulates over the tiles, each position weighted by the tile's
    share of it (so it counts once). The last pass runs through with every layer known.
    """

    def __init__(self, layout: TileLayout) -> None:
        self.layout = layout
        self.box = layout.boxes[0]
        self.stats: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}
        self.target: nn.GroupNorm | None = None
        self.sums: list[torch.Tensor] = []

    def hook(self, m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        assert isinstance(m, nn.GroupNorm)
        h = args[0]
        g = h.reshape(h.shape[0], m.num_groups, -1, *h.shape[2:])
        if m in self.stats:
            mean, var = (s.to(h.dtype).reshape(*s.shape, *([1] * (g.ndim - 2))) for s in self.stats[m])
            y = ((g - mean) / torch.sqrt(var + m.eps)).reshape(h.shape)
            if m.affine:
                shape = (1, -1, *([1] * (h.ndim - 2)))
                y = y * m.weight.reshape(shape) + m.bias.reshape(shape)
            return y
        if self.target is None:
            self.target = m
        if m is not self.target:
            raise RuntimeError("GroupNorm layers ran in a different order from one tile to the next")
        size = self.layout.size
        r = h.shape[2] // size[0]
        if [n * r for n in size] != list(h.shape[2:]):
            raise RuntimeError(f"a GroupNorm input {tuple(h.shape[2:])} is not on the tile's grid {size}")
        share = self.layout.share(self.box, r, h.device)
        gd = g.double()
        parts = [(gd * share).flatten(2).sum(2), (gd.pow(2) * share).flatten(2).sum(2), share.sum() * g.shape[2]]
        self.sums = parts if not self.sums else [a + b for a, b in zip(self.sums, parts)]
        raise _Collected

    def finish(self) -> bool:
        """Store the statistics gathered by the last pass; False when the pass ran through (all known)."""
        if self.target is None:
            return False
        s1, s2, n = self.sums
        mean = s1 / n
        self.stats[self.target] = (mean, (s2 / n - mean.pow(2)).clamp(min=0))
        self.target, self.sums = None, []
        return True


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    in_unit: int,
    out_unit: int,
    norms: Sequence[nn.GroupNorm] = (),
) -> torch.Tensor:
    """``fn(x)`` computed over overlapping tiles, blended (2D and 3D).

    ``fn`` maps ``(B, C, *S)`` to ``(B, C', *(S / in_unit * out_unit))`` (an encoder: ``in_unit`` =
    stride, ``out_unit`` = 1; a decoder: the reverse). Tiles are laid out on the common (latent)
    grid, so input and output tiles stay aligned, and blended with the weights of
    :class:`TileLayout` (Gaussian, tile borders inside the input trimmed). The GroupNorm layers
    ``norms`` of ``fn`` normalise with image-wide statistics (:class:`_GroupNormSync`: one extra
    pass over the tiles per layer, each stopping at its layer). For a convolutional ``fn`` whose
    receptive field reaches at most ``overlap // 2`` latent pixels, the result is one pass's.

    Args:
        x: ``(B, C, *S)`` with every ``S`` a multiple of ``in_unit``.
        tile: tile size on the latent grid (inputs no larger than one tile run in one pass).
        overlap: minimum overlap of neighbouring tiles on the latent grid.
        norms: the GroupNorm modules ``fn`` runs.
    """
    layout = TileLayout([int(n) // in_unit for n in x.shape[2:]], tile, overlap)
    if len(layout.boxes) == 1:
        return fn(x)
    sync = _GroupNormSync(layout)
    handles = [m.register_forward_hook(sync.hook) for m in norms]
    try:
        while True:  # gather one layer's statistics per pass until a pass runs through
            out: torch.Tensor | None = None
            for box in layout.boxes:
                sync.box = box
                try:
                    res = fn(x[(slice(None), slice(None), *layout.window(box, in_unit))])
                except _Collected:
                    continue
                if out is None:
                    shape = (x.shape[0], res.shape[1], *[n * out_unit for n in layout.grid])
                    out = torch.zeros(shape, device=x.device, dtype=res.dtype)
                share = layout.share(box, out_unit, x.device).to(res.dtype)
                out[(slice(None), slice(None), *layout.window(box, out_unit))] += res * share
            if not sync.finish():
                assert out is not None
                return out
    finally:
        for h in handles:
            h.remove()


class LatentSpace(nn.Module, StateSpace):
    """Diffusion on ``z = scale_factor * E(x)``, the latent of a frozen autoencoder (LDM).

    ``E`` is the KL posterior mean (or the VQ encoder output before quantisation; decoding
    quantises), ``D`` the decoder: ``decode(z) = D(z / scale_factor)``, cropped to the image's
    shape. ``scale_factor`` (LDM: ``1 / std`` of the latents) brings the latent near unit
    variance, the scale the noise schedule assumes. The network is conditioned on
    ``E(up(y))``: the interpolated input in the same latent space. Inputs whose sizes are not
    multiples of ``stride`` are edge-padded before encoding. The autoencoder stays frozen and in
    eval mode even when its parent module is set to training; its weights are saved with the
    diffusion checkpoint (``space.*``), so loading one needs no stage-1 file.

    Args:
        autoencoder_checkpoint: stage-1 checkpoint (``diffsr fit`` with an autoencoder config),
            used at training time.
        autoencoder: ``{"kind", "config"}`` instead (rebuilding from a checkpoint's spec: an
            untrained network whose weights are then loaded from the checkpoint).
        scale_factor: latent scale; ``None`` takes the stage-1 checkpoint's.
        tile: image pixels per tile when encoding and decoding (a multiple of the stride); 0
            for one pass. Larger inputs are processed in overlapping tiles (:func:`tiled_apply`),
            so peak memory follows the tile size; the GroupNorm statistics are gathered over the
            whole input first, which costs about half a pass per GroupNorm layer.
        overlap: image pixels of overlap between tiles (rounded down to the stride). At least
            twice the autoencoder's receptive radius (about 10 px each way for the 2-level
            configs) makes the tiled result equal one pass up to float rounding.
    """

    linear = False

    def __init__(
        self,
        autoencoder_checkpoint: str | None = None,
        autoencoder: dict[str, Any] | None = None,
        scale_factor: float | None = None,
        tile: int = 0,
        overlap: int = 32,
    ) -> None:
        from toolkit.autoencoder import autoencoder_stride, build_autoencoder, latent_channels, load_autoencoder

        nn.Module.__init__(self)
        if (autoencoder_checkpoint is None) == (autoencoder is None):
            raise ValueError(
                "give exactly one of autoencoder_checkpoint (a stage-1 file) and autoencoder (kind and config)"
            )
        if autoencoder_checkpoint is not None:
            ae, info = load_autoencoder(autoencoder_checkpoint)
            if scale_factor is None and info.get("scale_factor") is None:
                raise ValueError(
                    f"{autoencoder_checkpoint}: the autoencoder has no scale_factor (never trained); pass scale_factor"
                )
            self.kind, self.config = str(info["kind"]), dict(info["config"])
            scale_factor = info["scale_factor"] if scale_factor is None else scale_factor
            self._source = f"the autoencoder of {autoencoder_checkpoint}"
        else:
            assert autoencoder is not None
            if scale_factor is None:
                raise ValueError("scale_factor is needed when the autoencoder is given by kind and config")
            self.kind, self.config = str(autoencoder["kind"]), dict(autoencoder["config"])
            ae = build_autoencoder(self.kind, self.config)
            self._source = "the autoencoder"
        self.autoencoder = ae.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)  # type: ignore[arg-type]
        if not self.scale_factor > 0:
            raise ValueError(f"scale_factor must be > 0, got {self.scale_factor}")
        self.stride = autoencoder_stride(ae)
        self.latent_channels = latent_channels(ae)
        self.tile, self.overlap = int(tile), int(overlap)
        if self.tile < 0 or self.tile % self.stride:
            raise ValueError(f"tile must be 0 or a positive multiple of the stride {self.stride}, got {self.tile}")
        if self.tile and not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap must be in [0, tile), got {self.overlap} for tile {self.tile}")

    def train(self, mode: bool = True) -> LatentSpace:
        """Set the module's mode; the autoencoder stays in eval mode (frozen)."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    def _check(self, channels: int, spatial_dims: int) -> None:
        want = (int(self.config["in_channels"]), int(self.config["spatial_dims"]))
        if (channels, spatial_dims) != want:
            raise ValueError(
                f"{self._source} was trained on {want[0]}-channel {want[1]}D images, not {channels}-channel {spatial_dims}D"
            )

    def state_channels(self, channels: int, spatial_dims: int) -> int:
        self._check(channels, spatial_dims)
        return self.latent_channels

    def cond_channels(self, channels: int, spatial_dims: int) -> int:
        self._check(channels, spatial_dims)
        return self.latent_channels

    def _tiled(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, encoding: bool) -> torch.Tensor:
        if self.tile == 0:
            return fn(x)
        part = self.autoencoder.encoder if encoding else self.autoencoder.decoder
        norms = [m for m in part.modules() if isinstance(m, nn.GroupNorm)]
        units = (self.stride, 1) if encoding else (1, self.stride)
        return tiled_apply(fn, x, self.tile // self.stride, self.overlap // self.stride, *units, norms=norms)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Latent ``(B, C_z, *ceil(S / stride))`` of ``x`` ``(B, C, *S)`` (normalised units)."""
        from toolkit.autoencoder import encode_latent, pad_to_multiple

        self._check(x.shape[1], x.ndim - 2)
        xp = pad_to_multiple(x, self.stride)
        return self._tiled(lambda t: encode_latent(self.autoencoder, t), xp, encoding=True) * self.scale_factor

    def decode(
        self, z: torch.Tensor, y: torch.Tensor | None = None, shape: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Image ``(B, C, *shape)`` from latent ``z`` (``shape`` defaults to ``z``'s grid times ``stride``)."""
        from toolkit.autoencoder import decode_latent

        out = self._tiled(lambda t: decode_latent(self.autoencoder, t), z / self.scale_factor, encoding=False)
        if shape is None:
            return out
        return out[(slice(None), slice(None), *(slice(0, int(n)) for n in shape))]

    def condition(self, y: torch.Tensor, hr_shape: Sequence[int]) -> torch.Tensor:
        return self.encode(upsample(y, hr_shape), y)

    def spec(self) -> dict[str, Any]:
        return {
            "type": "latent",
            "autoencoder": {"kind": self.kind, "config": self.config},
            "scale_factor": self.scale_factor,
            "tile": self.tile,
            "overlap": self.overlap,
        }


register_space("latent", LatentSpace)
