"""Degradation operators ``y = A(x)`` with a true adjoint and an exact pseudo-inverse.

The same operator makes training pairs, constrains zero-shot sampling and scores consistency.
Every operator here is separable: a linear map along each spatial axis, so ``A`` is a Kronecker
product of per-axis matrices ``M_i``. Then ``A^T`` is the product of the ``M_i^T`` and
``A^+`` is the product of the ``M_i^+`` (the pseudo-inverse of a Kronecker product is the
Kronecker product of the pseudo-inverses), so adjointness and ``A(A^+(y)) = y`` hold to
machine precision on any shape. Subclasses give the per-axis matrix; fast paths override it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from toolkit.utils import as_factors, build_from_spec


class Operator:
    """Linear degradation with ``A``, ``A_adjoint`` and ``A_pinv``, acting on ``(B, C, *spatial)``."""

    #: integer factor per spatial axis between the high- and low-resolution grids
    factors: tuple[int, ...]
    #: each low-resolution sample depends only on its own block of high-resolution samples, so
    #: ``A``, ``A_pinv`` and ``project`` on block-aligned windows equal the whole-array result
    block_local: bool = False

    @property
    def halo(self) -> int | None:
        """High-resolution samples beyond a window whose values reach ``A`` inside it (windowed use).

        ``A`` of a window widened by ``halo`` on each side equals the whole-array ``A`` inside the
        window. 0 for block-local operators; ``None`` for a global operator (every low-resolution
        sample depends on the whole axis, as in k-space truncation): only the whole array is exact.
        Every operator declares it; there is no fallback.
        """
        raise NotImplementedError(f"{type(self).__name__} does not declare its halo")

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (paper notation)
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    @property
    def spatial_dims(self) -> int:
        return len(self.factors)

    def lr_shape(self, hr_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of ``A(x)`` for a spatial shape ``hr_shape`` (each divisible by its factor)."""
        self.check_hr_shape(hr_shape)
        return tuple(n // f for n, f in zip(hr_shape, self.factors))

    def hr_shape(self, lr_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(n * f for n, f in zip(lr_shape, self.factors))

    def check_hr_shape(self, hr_shape: Sequence[int]) -> None:
        if len(hr_shape) != len(self.factors):
            raise ValueError(f"operator has {len(self.factors)} spatial dims, input has {len(hr_shape)}")
        bad = [(n, f) for n, f in zip(hr_shape, self.factors) if n % f]
        if bad:
            raise ValueError(f"spatial shape {tuple(hr_shape)} is not divisible by factors {self.factors}")

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Range-null-space projection onto ``{x : A x = y}`` (DDNM): ``x + A^+(y - A x)``.

        For a pseudo-inverse this is the orthogonal projection onto that affine set, so it never
        moves an estimate further from any ``x`` that explains ``y``.
        """
        return x + self.A_pinv(y - self.A(x))

    def spec(self) -> dict[str, Any]:
        """Plain-data description stored in checkpoints (see :func:`operator_from_spec`)."""
        raise NotImplementedError

    def svd(self, hr_shape: Sequence[int], channels: int) -> OperatorSVD:
        """``A = U diag(s) V^T`` on images of spatial ``hr_shape`` with ``channels`` channels (DDRM)."""
        raise NotImplementedError(f"{type(self).__name__} gives no SVD (zero-shot ddrm needs one)")


#: per spatial axis, ``(U, S, Vh)`` of the axis matrix (float64 on the CPU) or ``None`` for the identity
AxisSVD = list["tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None"]


class OperatorSVD:
    """The SVD ``A = U diag(s) V^T`` of an operator that is, per group of channels, a Kronecker
    product of per-axis matrices ``M_i = U_i S_i V_i^T`` (``m_i x n_i``).

    The SVD of a Kronecker product is the Kronecker product of the SVDs, so nothing of size
    ``prod(n_i)`` squared is ever formed: ``V^T x`` applies ``V_i^T`` along each axis (a spectral
    array of the image's shape), ``U^T y`` applies ``U_i^T`` (the measurement's shape), and the
    singular values of the measured block ``k_i < m_i`` are the outer product of the ``S_i``.
    Singular values below ``rtol`` times the largest are treated as zero (unmeasured).

    Args:
        hr_shape, lr_shape: spatial shapes of ``x`` and ``A x``.
        groups: ``(channel indices or None for all, per-axis SVDs)`` for each group of channels.
        rtol: relative threshold on singular values.
    """

    def __init__(
        self, hr_shape: Sequence[int], lr_shape: Sequence[int], groups: list[tuple[list[int] | None, AxisSVD]], rtol: float = 1e-6
    ) -> None:
        self.hr_shape, self.lr_shape = tuple(int(n) for n in hr_shape), tuple(int(n) for n in lr_shape)
        self.groups, self.rtol = groups, float(rtol)

    @staticmethod
    def dtype(device: torch.device) -> torch.dtype:
        """float64 where ``device`` has it (small singular values), else float32."""
        from toolkit.utils import has_float64

        return torch.float64 if has_float64(device) else torch.float32

    def _map(self, t: torch.Tensor, pick: int, transpose: bool) -> torch.Tensor:
        out = []
        for idx, axes in self.groups:
            part = t if idx is None else t[:, idx]
            mats = []
            for f in axes:
                m = None if f is None else f[pick].to(device=t.device, dtype=t.dtype)
                mats.append(None if m is None else (m.T if transpose else m))
            out.append((idx, SeparableOperator._apply(part, mats)))
        if len(out) == 1 and out[0][0] is None:
            return out[0][1]
        full = torch.empty((t.shape[0], t.shape[1], *out[0][1].shape[2:]), dtype=t.dtype, device=t.device)
        for idx, part in out:
            full[:, idx] = part
        return full

    def Vt(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Spectral coefficients ``V^T x`` ``(B, C, *hr_shape)``."""
        return self._map(x, 2, False)

    def V(self, v: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._map(v, 2, True)

    def Ut(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``U^T y`` ``(B, C, *lr_shape)``."""
        return self._map(y, 0, True)

    def U(self, c: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._map(c, 0, False)

    def measured_view(self, v: torch.Tensor) -> torch.Tensor:
        """The measured block ``k_i < m_i`` of a spectral array."""
        return v[(slice(None), slice(None), *(slice(0, m) for m in self.lr_shape))]

    def with_measured(self, v: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """``v`` with its measured block replaced by ``block``."""
        out = v.clone()
        out[(slice(None), slice(None), *(slice(0, m) for m in self.lr_shape))] = block
        return out

    def singulars(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64, channels: int | None = None) -> torch.Tensor:
        """Singular values of the measured block ``(C, *lr_shape)`` (0 below the threshold)."""
        per: dict[int, torch.Tensor] = {}
        n_channels = channels or max((max(idx) + 1 for idx, _ in self.groups if idx is not None), default=1)
        for idx, axes in self.groups:
            s = torch.ones((), dtype=torch.float64)
            for f, m in zip(axes, self.lr_shape):
                sv = torch.ones(m, dtype=torch.float64) if f is None else f[1]
                s = s[..., None] * sv
            for c in (range(n_channels) if idx is None else idx):
                per[c] = s
        s = torch.stack([per[c] for c in sorted(per)])
        s = torch.where(s > self.rtol * s.max(), s, torch.zeros_like(s))
        return s.to(device=device, dtype=dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``U diag(s) (V^T x)`` over the measured block (for checks: equals the operator's ``A``)."""
        s = self.singulars(x.device, x.dtype, x.shape[1])
        return self.U(s * self.measured_view(self.Vt(x)))


class SeparableOperator(Operator):
    """Operator that applies one matrix ``M_i (m_i x n_i)`` along each spatial axis ``i``."""

    def axis_matrix(self, axis: int, n: int) -> torch.Tensor | None:
        """The float64 ``(n // f, n)`` matrix along spatial axis ``axis`` for length ``n`` (``None``: identity)."""
        raise NotImplementedError

    def _matrices(
        self, shape: Sequence[int], kind: str, device: torch.device, dtype: torch.dtype
    ) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for axis, n in enumerate(shape):
            m = _cached_axis(self, axis, n, kind)
            out.append(None if m is None else m.to(device=device, dtype=dtype))
        return out

    @staticmethod
    def _apply(x: torch.Tensor, mats: list[torch.Tensor | None]) -> torch.Tensor:
        for axis, m in enumerate(mats):
            if m is not None:
                dim = 2 + axis
                x = torch.movedim(torch.movedim(x, dim, -1) @ m.T, -1, dim)
        return x

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_hr_shape(x.shape[2:])
        return self._apply(x, self._matrices(x.shape[2:], "A", x.device, x.dtype))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        shape = self.hr_shape(y.shape[2:])
        return self._apply(y, self._matrices(shape, "AT", y.device, y.dtype))

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        shape = self.hr_shape(y.shape[2:])
        return self._apply(y, self._matrices(shape, "pinv", y.device, y.dtype))

    def svd(self, hr_shape: Sequence[int], channels: int) -> OperatorSVD:
        self.check_hr_shape(hr_shape)
        return OperatorSVD(hr_shape, self.lr_shape(hr_shape), [(None, self.axis_svds(hr_shape))])

    def axis_svds(self, hr_shape: Sequence[int]) -> AxisSVD:
        """``(U, S, Vh)`` of each axis matrix (``None`` for an identity axis), float64, cached."""
        return [_cached_axis(self, axis, int(n), "svd") for axis, n in enumerate(hr_shape)]  # type: ignore[misc]

    # Operators are compared and hashed by spec so the matrix cache is shared between equal ones.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Operator) and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(repr(self.spec()))


@lru_cache(maxsize=256)
def _cached_axis(op: SeparableOperator, axis: int, n: int, kind: str) -> torch.Tensor | None:
    m = op.axis_matrix(axis, n)
    if m is None or kind == "A":
        return m
    if kind == "AT":
        return m.T.contiguous()
    if kind == "svd":
        u, sv, vh = torch.linalg.svd(m, full_matrices=True)
        return u, sv, vh  # type: ignore[return-value]
    return torch.linalg.pinv(m)


class AreaDownsample(SeparableOperator):
    """Box (area) downsampling: each low-resolution sample is the mean of its ``f_1 x ... x f_d`` block.

    ``A^T y`` spreads ``y / prod(f)`` over each block; ``A^+ y`` replicates ``y`` over each block
    (``A A^T = I / prod(f)``), so ``A(A^+(y)) = y`` exactly.

    Args:
        factors: integer factor per spatial axis, e.g. ``2``, ``(2, 2)`` or ``(1, 1, 4)``.
        spatial_dims: number of spatial axes when ``factors`` is a single int.
    """

    block_local = True

    def __init__(self, factors: int | Sequence[int] = 2, spatial_dims: int = 2) -> None:
        self.factors = as_factors(factors, spatial_dims if isinstance(factors, int) else len(factors))
        if min(self.factors) < 1:
            raise ValueError(f"factors must be >= 1, got {self.factors}")

    def axis_matrix(self, axis: int, n: int) -> torch.Tensor | None:
        f = self.factors[axis]
        if f == 1:
            return None
        m = torch.zeros(n // f, n, dtype=torch.float64)
        for i in range(n // f):
            m[i, i * f : (i + 1) * f] = 1.0 / f
        return m

    halo = 0

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_hr_shape(x.shape[2:])
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}.get(x.ndim - 2)
        if pool is None:
            return super().A(x)
        return pool(x, kernel_size=self.factors, stride=self.factors)

    def _replicate(self, y: torch.Tensor) -> torch.Tensor:
        for axis, f in enumerate(self.factors):
            if f > 1:
                y = torch.repeat_interleave(y, f, dim=2 + axis)
        return y

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._replicate(y) / math.prod(self.factors)

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._replicate(y)

    def spec(self) -> dict[str, Any]:
        return {"type": "area", "factors": list(self.factors)}


class GaussianDownsample(SeparableOperator):
    """Gaussian blur then decimation (antialiased downsampling), with symmetric boundaries.

    Along an axis with factor ``f`` the low-resolution sample ``i`` is a Gaussian-weighted mean
    centred at high-resolution coordinate ``i * f + (f - 1) / 2``: the centre of its block, as for
    :class:`AreaDownsample`, so both operators put the low-resolution grid in the same place.
    Taps falling outside the signal are mirrored back (half-sample symmetric), and each row
    sums to one. The adjoint is the exact transpose; the pseudo-inverse comes from an SVD.

    Args:
        factors: integer factor per spatial axis.
        sigma: blur standard deviation in high-resolution samples, one per axis or one for all;
            ``None`` gives ``0.5 * f`` per axis (about the MTF of an area detector at Nyquist).
        spatial_dims: number of spatial axes when ``factors`` is a single int.
        truncate: kernel half-width in units of sigma.
    """

    def __init__(
        self,
        factors: int | Sequence[int] = 2,
        sigma: float | Sequence[float] | None = None,
        spatial_dims: int = 2,
        truncate: float = 4.0,
    ) -> None:
        self.factors = as_factors(factors, spatial_dims if isinstance(factors, int) else len(factors))
        if sigma is None:
            self.sigma = tuple(0.5 * f for f in self.factors)
        elif isinstance(sigma, (int, float)):
            self.sigma = (float(sigma),) * len(self.factors)
        else:
            self.sigma = tuple(float(s) for s in sigma)
            if len(self.sigma) != len(self.factors):
                raise ValueError("one sigma per spatial axis is needed")
        self.truncate = float(truncate)

    def axis_matrix(self, axis: int, n: int) -> torch.Tensor | None:
        f, s = self.factors[axis], self.sigma[axis]
        m = torch.zeros(n // f, n, dtype=torch.float64)
        if s <= 0:
            if f != 1:
                raise ValueError("sigma must be > 0 when decimating")
            return None
        radius = max(1, math.ceil(self.truncate * s + (f - 1) / 2))
        for i in range(n // f):
            c = i * f + (f - 1) / 2
            lo, hi = math.floor(c - radius), math.ceil(c + radius)
            for j in range(lo, hi + 1):
                w = math.exp(-0.5 * ((j - c) / s) ** 2)
                k = _mirror(j, n)
                m[i, k] += w
        return m / m.sum(dim=1, keepdim=True)

    @property
    def halo(self) -> int:
        """The kernel's reach (``truncate * sigma``) plus a block (mirrored taps at a window's edge)."""
        return math.ceil(self.truncate * max(self.sigma) + max(self.factors))

    def spec(self) -> dict[str, Any]:
        return {"type": "gaussian", "factors": list(self.factors), "sigma": list(self.sigma), "truncate": self.truncate}


class SliceAverage(SeparableOperator):
    """Slice-thickness model: along one axis each low-resolution slice is the mean of ``thickness``
    consecutive high-resolution slices at the centre of its block of ``factor`` (thick slices,
    with a gap of ``factor - thickness`` slices between them when ``thickness < factor``).

    Args:
        factor: slice spacing in high-resolution slices.
        axis: the slice axis among the spatial axes (negative counts from the end).
        spatial_dims: number of spatial axes.
        thickness: slices averaged per low-resolution slice (default ``factor``: no gap);
            ``factor - thickness`` must be even so the slab stays centred in its block.
    """

    block_local = True
    halo = 0

    def __init__(self, factor: int = 4, axis: int = -1, spatial_dims: int = 3, thickness: int | None = None) -> None:
        self.axis = axis % spatial_dims
        self.factor = int(factor)
        self.thickness = int(thickness or factor)
        if not 1 <= self.thickness <= self.factor or (self.factor - self.thickness) % 2:
            raise ValueError(f"thickness {self.thickness} must be in [1, {self.factor}] with an even gap")
        self.factors = tuple(self.factor if a == self.axis else 1 for a in range(spatial_dims))

    def axis_matrix(self, axis: int, n: int) -> torch.Tensor | None:
        if axis != self.axis or self.factor == 1 and self.thickness == 1:
            return None
        f, t = self.factor, self.thickness
        m = torch.zeros(n // f, n, dtype=torch.float64)
        for i in range(n // f):
            start = i * f + (f - t) // 2
            m[i, start : start + t] = 1.0 / t
        return m

    def spec(self) -> dict[str, Any]:
        return {
            "type": "slice_average",
            "factor": self.factor,
            "axis": self.axis,
            "spatial_dims": len(self.factors),
            "thickness": self.thickness,
        }


class FourierCrop(SeparableOperator):
    """k-space truncation: keep the central ``n / f`` frequencies along each axis (a lower-resolution
    acquisition of the same field of view), as a real operator.

    Along an axis of ``n`` samples the low-resolution sample ``i`` is the band-limited
    interpolant of the kept frequencies ``k`` (``|k| <= m / 2``, ``m = n / f``) evaluated at the
    centre of block ``i`` (high-resolution coordinate ``i f + (f - 1) / 2``), so the grid matches
    :class:`AreaDownsample`; constants are kept. ``A^+ A`` is the orthogonal projection onto the
    kept band: frequencies below ``m / 2`` come back exactly, those above are removed.

    Args:
        factors: integer factor per spatial axis (1 keeps an axis untouched).
        spatial_dims: number of spatial axes when ``factors`` is a single int.
    """

    def __init__(self, factors: int | Sequence[int] = 2, spatial_dims: int = 3) -> None:
        self.factors = as_factors(factors, spatial_dims if isinstance(factors, int) else len(factors))

    def axis_matrix(self, axis: int, n: int) -> torch.Tensor | None:
        f = self.factors[axis]
        if f == 1:
            return None
        m = n // f
        k = torch.arange(-(m // 2), (m - 1) // 2 + 1, dtype=torch.float64)
        pos = torch.arange(m, dtype=torch.float64) * f + (f - 1) / 2  # LR sample centres in HR samples
        j = torch.arange(n, dtype=torch.float64)
        phase = 2 * math.pi * k[None, None, :] * (pos[:, None, None] - j[None, :, None]) / n
        return torch.cos(phase).sum(-1) / n

    #: every kept frequency spans the whole axis: only the whole array is exact
    halo = None

    def spec(self) -> dict[str, Any]:
        return {"type": "fourier_crop", "factors": list(self.factors)}


#: the names ``--operator`` takes (zero-shot SR, ``diffsr degrade``)
OPERATOR_NAMES = ("area", "gaussian", "slice", "kspace", "mtf")


def operator_by_name(kind: str, scale: int | Sequence[int], spatial_dims: int = 2, mtf: float = 0.3) -> Operator:
    """Operator by the name ``--operator`` takes, at ``scale`` (one factor for every axis, or one per axis).

    ``area`` (box), ``gaussian`` (antialiased), ``kspace`` (k-space truncation) take a factor per
    axis; ``slice`` (slice-thickness averaging) the slice axis from the one factor above 1 (one
    int: the last axis); ``mtf`` the sensor model of the satellite domain (Gaussian PSF with MTF
    ``mtf`` at the coarse grid's Nyquist), found through the ``diffsr.operators`` entry points.

    Raises:
        ValueError: an unknown name, or factors that do not fit ``spatial_dims``.
    """
    if not isinstance(scale, int) and len(scale) != spatial_dims:
        raise ValueError(f"--scale {','.join(map(str, scale))}: {len(scale)} factors for a {spatial_dims}D input (give 1 or {spatial_dims})")
    if kind == "area":
        return AreaDownsample(scale, spatial_dims=spatial_dims)
    if kind == "gaussian":
        return GaussianDownsample(scale, spatial_dims=spatial_dims)
    if kind == "kspace":
        return FourierCrop(scale, spatial_dims=spatial_dims)
    if kind == "slice":
        if isinstance(scale, int):
            return SliceAverage(scale, axis=-1, spatial_dims=spatial_dims)
        thick = [a for a, f in enumerate(scale) if f > 1]
        if len(thick) != 1:
            raise ValueError(f"--operator slice needs a factor above 1 on exactly one axis, got {tuple(scale)} (e.g. 1,1,4)")
        return SliceAverage(scale[thick[0]], axis=thick[0], spatial_dims=spatial_dims)
    if kind == "mtf":
        factors = list(as_factors(scale, spatial_dims)) if isinstance(scale, int) else list(scale)
        return operator_from_spec({"type": "sensor_mtf", "factors": factors, "mtf": float(mtf)})
    raise ValueError(f"unknown operator {kind!r} ({', '.join(OPERATOR_NAMES)})")


def _mirror(j: int, n: int) -> int:
    """Half-sample symmetric index reflection into ``[0, n)``."""
    period = 2 * n
    j %= period
    return j if j < n else period - 1 - j


_OPERATORS: dict[str, type[Operator]] = {
    "area": AreaDownsample,
    "gaussian": GaussianDownsample,
    "slice_average": SliceAverage,
    "fourier_crop": FourierCrop,
}


def register_operator(name: str, cls: type[Operator]) -> None:
    """Allow checkpoints to rebuild operator ``cls`` from a spec whose ``type`` is ``name`` in this process.

    A package's operators are found without importing it first when it declares them in its
    ``diffsr.operators`` entry points (see :func:`toolkit.utils.build_from_spec`).
    """
    _OPERATORS[name] = cls


def operator_from_spec(spec: dict[str, Any]) -> Operator:
    """Rebuild an operator from :meth:`Operator.spec` data (only known, registered types)."""
    return build_from_spec(_OPERATORS, spec, "operator", group="diffsr.operators")
