"""Zero-shot SR: an unconditional prior told the degradation ``y = A x + n`` at inference.

Each method is a :class:`ZeroShot` bound to one measurement (the operator, ``y`` and the noise
level ``sigma_y``) and one schedule; the engine's one loop (:func:`toolkit.engine.sample_canvas`)
calls its hooks around the sampler's step, so every method runs with any process whose marginals
are ``z = alpha x0 + sigma eps``, in 2D and 3D, on any registered linear operator:

* :meth:`ZeroShot.x0`: correct the data prediction ``x0_hat`` before the step (DDNM, DDNM+, GDP);
* :meth:`ZeroShot.step`: replace the sampler's step (DDRM's step in the operator's SVD basis);
* :meth:`ZeroShot.after`: correct the next state (ILVR, RePaint: the range space set from the
  noised measurement; DPS: a gradient step through the network);
* :func:`method_plan`: the order of steps and of jumps back to noisier levels (RePaint's
  resampling, DDNM+'s time travel).

The methods (``METHODS``; the papers' names and their parameters):

======== =========================================================================================
ddnm     Wang et al. 2023: ``x0 <- x0 + A^+(y - A x0)`` at every step (noise-free ``y``).
ddnm+    DDNM+: the correction scaled by ``lambda_t`` and the step's noise by ``gamma_t`` so the
         measurement noise ``sigma_y`` is never amplified; optional time travel (``travel_length``
         levels back, ``travel_repeat`` times).
ddrm     Kawar et al. 2022: the step in the SVD basis ``A = U S V^T``, measured components pulled
         to ``S^-1 U^T y`` (``eta_b``), the null space DDIM-like (``eta``).
ilvr     Choi et al. 2021: the low-pass ``A^+ A z`` of the next state replaced by that of the
         noised measurement.
repaint  Lugmayr et al. 2022 adapted to SR: as ILVR, and each step undone and redone ``jumps`` times.
dps      Chung et al. 2023: ``z' -= zeta grad_z ||y - A x0_hat(z)||`` through the network.
gdp      Fei et al. 2023 (GDP-x0): ``z' -= scale * var_t * grad_x0 ||y - A x0||^2`` on ``x0_hat``
         (no backward pass through the network), scaled by the step's posterior variance.
======== =========================================================================================

The state may be any linear space whose decoding does not depend on ``y`` (pixels, an
orthonormal wavelet packet): :class:`StateOperator` sees the operator through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch

from toolkit.operators import Operator, OperatorSVD
from toolkit.process import Schedule
from toolkit.samplers import Stepper, ddim_coefficients
from toolkit.spaces import StateSpace

#: an action of a plan: ``("step", i)`` takes level ``i`` to ``i + 1``; ``("jump", i, j)`` noises level ``i`` back to ``j < i``
Action = tuple


@dataclass(frozen=True)
class ZeroShotOptions:
    """Which zero-shot method, and its parameters (stored in the sampling options).

    Attributes:
        method: one of :func:`method_names`.
        sigma_y: measurement noise standard deviation as a fraction of the signal's range: the
            span the model's normalisation maps onto [-1, 1] (each band's percentile span for
            rasters and volumes, [0, 1] for photos), so 0.05 is 5 % of it; DDNM+ and DDRM use it.
        eta: DDRM's null-space stochasticity; DDNM+'s step noise (0: DDIM).
        eta_b: DDRM's weight of the measurement on measured components (1: the measurement).
        zeta: DPS step on the gradient of the residual norm.
        scale: GDP's guidance scale.
        jumps: RePaint's resamplings per step (1: none, as ILVR).
        travel_length: DDNM+ time travel: levels to jump back (0: none).
        travel_repeat: DDNM+ time travel: times each travel is repeated.
        unit: normalised units per unit of ``sigma_y``: 1 at the engine (``sigma_y`` in
            normalised units); :meth:`toolkit.checkpoint.SRModel.zero_shot` sets 2, the span of [-1, 1].
    """

    method: str = "ddnm"
    sigma_y: float = 0.0
    eta: float = 0.85
    eta_b: float = 1.0
    zeta: float = 1.0
    scale: float = 1.0
    jumps: int = 5
    travel_length: int = 0
    travel_repeat: int = 1
    unit: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown zero-shot method {self.method!r}; choose one of {', '.join(method_names())}")
        for name in ("sigma_y", "eta", "eta_b", "zeta", "scale", "unit"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"zero-shot {name} must be a finite number >= 0, got {value!r}")
        if int(self.jumps) < 1 or int(self.travel_repeat) < 1 or int(self.travel_length) < 0:
            raise ValueError("zero-shot jumps and travel_repeat must be >= 1, travel_length >= 0")

    def updated(self, **kwargs: Any) -> ZeroShotOptions:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def spec(self) -> dict[str, Any]:
        return asdict(self)


class StateOperator:
    """The operator seen from the state: ``A(decode(z))``, ``encode(A^+ y)``, and the SVD through the space.

    Exact for a linear space that does not use ``y`` and whose transform is orthonormal
    (:class:`toolkit.spaces.PixelSpace`, a ``full`` :class:`toolkit.spaces.WaveletSpace`):
    ``(A W^T)^+ = W A^+`` and ``A W^T = U S (W V)^T``.
    """

    def __init__(self, operator: Operator, space: StateSpace, hr_shape: Sequence[int]) -> None:
        if space.uses_input or not space.linear:
            raise ValueError(
                f"zero-shot SR needs a prior whose state space is linear and independent of the input "
                f"(pixel, or a 'full' wavelet space), not {space.spec().get('type')!r}"
            )
        self.operator, self.space, self.hr_shape = operator, space, tuple(int(n) for n in hr_shape)
        self._svd: OperatorSVD | None = None

    def image(self, z: torch.Tensor) -> torch.Tensor:
        return self.space.decode(z, None, self.hr_shape)  # type: ignore[arg-type]

    def state(self, x: torch.Tensor) -> torch.Tensor:
        return self.space.encode(x, None)  # type: ignore[arg-type]

    def A(self, z: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.operator.A(self.image(z))

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.state(self.operator.A_pinv(y))

    def project(self, z: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """``z + weight * A^+(y - A z)`` (``weight`` 1: onto ``{A z = y}``)."""
        return z + weight * self.A_pinv(y - self.A(z))

    def low_pass(self, z: torch.Tensor) -> torch.Tensor:
        """``A^+ A z``: the part of ``z`` the measurement sees (ILVR's low-pass filter)."""
        return self.A_pinv(self.A(z))

    def svd(self, channels: int) -> OperatorSVD:
        if self._svd is None:
            self._svd = self.operator.svd(self.hr_shape, channels)
        return self._svd


class ZeroShot:
    """A zero-shot method bound to one measurement and one schedule (see the module docstring)."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    #: the loop computes ``grad_z`` of :meth:`loss` through the network at each step (DPS)
    needs_grad: ClassVar[bool] = False

    def __init__(self, options: ZeroShotOptions, op: StateOperator, y: torch.Tensor, sigma_y: float, schedule: Schedule) -> None:
        self.options, self.op, self.y, self.sigma_y, self.schedule = options, op, y, float(sigma_y), schedule

    def check(self, stepper: Stepper) -> None:
        """Refuse a sampler the method cannot run with."""

    def x0(self, x0: torch.Tensor, z: torch.Tensor, i: int) -> torch.Tensor:
        return x0

    def step(self, stepper: Stepper, z: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, i: int,
             noise: torch.Tensor | None, previous: Sequence[torch.Tensor]) -> torch.Tensor:
        return stepper.step(z, x0, eps, i, noise, previous)

    def needs_noise(self, stepper: Stepper, i: int) -> bool:
        """Whether :meth:`step` takes fresh noise at step ``i``."""
        return stepper.needs_noise(i)

    #: :meth:`after` takes a second noise tensor (the noised measurement's)
    after_noise: ClassVar[bool] = False

    def after(self, z_next: torch.Tensor, x0: torch.Tensor, i: int, noise: torch.Tensor | None,
              grad: torch.Tensor | None) -> torch.Tensor:
        return z_next

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """Per-item measurement loss (DPS differentiates it through the network)."""
        r = (self.y - self.op.A(x0)).flatten(1)
        return r.norm(dim=1)



def _single_step_only(method: str, stepper: Stepper) -> None:
    if stepper.history:
        raise ValueError(f"zero-shot {method} jumps back to noisier levels: use a single-step sampler (ddim, ddpm), not a multistep one")


def jump_back(z: torch.Tensor, schedule: Schedule, i: int, j: int, noise: torch.Tensor) -> torch.Tensor:
    """A draw of the state at the noisier level ``j < i`` given the state at level ``i`` (the forward transition).

    ``z_j = (alpha_j / alpha_i) z_i + sqrt(sigma_j^2 - (alpha_j sigma_i / alpha_i)^2) n``.
    """
    a = schedule.alpha[j] / schedule.alpha[i]
    s = math.sqrt(max(schedule.sigma[j] ** 2 - (a * schedule.sigma[i]) ** 2, 0.0))
    return a * z + s * noise


def method_plan(options: ZeroShotOptions | None, steps: int) -> list[Action]:
    """The loop's actions for ``steps`` levels: one step per level, plus the method's jumps back.

    RePaint: after step ``i`` the state is noised back to level ``i`` and the step redone,
    ``jumps - 1`` times (not after the last step). DDNM+ with ``travel_length``: :func:`travel_plan`.
    """
    if options is not None and options.method == "repaint":
        out: list[Action] = []
        for i in range(steps):
            out.append(("step", i))
            if i < steps - 1:
                for _ in range(int(options.jumps) - 1):
                    out += [("jump", i + 1, i), ("step", i)]
        return out
    if options is not None and options.method == "ddnm+":
        return travel_plan(steps, int(options.travel_length), int(options.travel_repeat))
    return [("step", i) for i in range(steps)]


def travel_plan(steps: int, length: int, repeat: int) -> list[Action]:
    """Steps with time travel (RePaint's jump schedule): after reaching level ``k + length`` for
    ``k`` a multiple of ``length``, jump back ``length`` levels, ``repeat - 1`` times."""
    if length <= 0 or repeat <= 1:
        return [("step", i) for i in range(steps)]
    out: list[Action] = []
    done: dict[int, int] = {}
    i = 0
    while i < steps:
        out.append(("step", i))
        i += 1
        if i >= length and i % length == 0 and i < steps and done.get(i, 0) < repeat - 1:
            done[i] = done.get(i, 0) + 1
            out.append(("jump", i, i - length))
            i -= length
    return out


class DDNM(ZeroShot):
    name = "ddnm"
    summary = "range-null-space: x0 <- x0 + A^+(y - A x0) every step (noise-free y)"

    def x0(self, x0, z, i):  # type: ignore[no-untyped-def]
        return self.op.project(x0, self.y)


class DDNMPlus(ZeroShot):
    """DDNM+ (Wang et al. 2023, Eqs. 17-19, the simplified form with scalar ``Sigma_t = lambda_t I``).

    The corrected prediction carries ``lambda_t A^+ n`` of the measurement noise, which the next
    state scales by ``alpha'``; the step adds noise of std ``sqrt(gamma_t)`` so the total stays
    ``sigma'``: ``lambda_t = min(1, sigma' / (alpha' sigma_y))``, ``gamma_t = sigma'^2 - (alpha' lambda_t sigma_y)^2``.
    """

    name = "ddnm+"
    summary = "DDNM with measurement noise sigma_y (scaled correction and noise) and time travel"

    def check(self, stepper: Stepper) -> None:
        if self.options.travel_length:
            _single_step_only(self.name, stepper)

    def _lambda_gamma(self, i: int) -> tuple[float, float]:
        a, s = self.schedule.alpha[i + 1], self.schedule.sigma[i + 1]
        if self.sigma_y == 0 or s >= a * self.sigma_y:
            lam = 1.0
        else:
            lam = s / (a * self.sigma_y)
        return lam, max(s**2 - (a * lam * self.sigma_y) ** 2, 0.0)

    def x0(self, x0, z, i):  # type: ignore[no-untyped-def]
        return self.op.project(x0, self.y, self._lambda_gamma(i)[0])

    def needs_noise(self, stepper: Stepper, i: int) -> bool:
        return self.options.eta > 0 and self.schedule.sigma[i + 1] > 0

    def step(self, stepper, z, x0, eps, i, noise, previous):  # type: ignore[no-untyped-def]
        _, gamma = self._lambda_gamma(i)
        _, _, s_ddim = ddim_coefficients(self.schedule, i, self.options.eta)
        sigma_next = self.schedule.sigma[i + 1]
        out = self.schedule.alpha[i + 1] * x0
        if sigma_next == 0:
            return out
        # DDIM's split of the next level's noise between the predicted eps and fresh noise, at std sqrt(gamma)
        frac_noise = min(s_ddim / sigma_next, 1.0)
        out = out + math.sqrt(gamma) * math.sqrt(1 - frac_noise**2) * eps
        if noise is not None and frac_noise > 0:
            out = out + math.sqrt(gamma) * frac_noise * noise
        return out


class DDRM(ZeroShot):
    """DDRM (Kawar et al. 2022, ``efficient_generalized_steps``) in the operator's SVD basis.

    With ``x = z / alpha`` (the variance-exploding view, ``sigma_bar = sigma / alpha``) and the
    spectral coefficients ``v = V^T x``, ``ybar = S^-1 U^T y`` on measured components, the next level is:

    * null space (``s = 0``): ``v' = V^T x0 + sqrt(1 - eta^2) sigma_bar' V^T eps + eta sigma_bar' n``;
    * ``s sigma_bar' < sigma_y`` (the state less noisy than ``y``): ``v' = V^T x0 + sqrt(1 - eta^2)
      sigma_bar' s (ybar - V^T x0) / sigma_y + eta sigma_bar' n``;
    * otherwise: ``v' = eta_b ybar + (1 - eta_b) V^T x0 + sqrt(sigma_bar'^2 - sigma_y^2 eta_b^2 / s^2) n``.

    The spectral arithmetic runs in float64 where the device has it (small singular values).
    """

    name = "ddrm"
    summary = "denoising in the operator's SVD basis (eta, eta_b, sigma_y)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.svd = self.op.svd(self.y.shape[1])
        self.dtype = self.svd.dtype(self.y.device)
        s = self.svd.singulars(self.y.device, self.dtype)  # (C, *lr)
        self.s = s
        self.measured = s > 0
        self.ybar = torch.where(self.measured, self.svd.Ut(self.y.to(self.dtype)) / s.clamp(min=1e-300), 0.0)

    def needs_noise(self, stepper: Stepper, i: int) -> bool:
        return self.schedule.sigma[i + 1] > 0

    def step(self, stepper, z, x0, eps, i, noise, previous):  # type: ignore[no-untyped-def]
        sch, o = self.schedule, self.options
        a_next = sch.alpha[i + 1]
        sig_next = sch.sigma[i + 1] / a_next
        sig_y = self.sigma_y
        vx0 = self.svd.Vt(self.op.image(x0).to(self.dtype))
        veps = self.svd.Vt(self.op.image(eps).to(self.dtype))
        vn = self.svd.Vt(self.op.image(noise).to(self.dtype)) if noise is not None else torch.zeros_like(vx0)
        eta, eta_b = o.eta, o.eta_b
        out = vx0 + math.sqrt(max(1 - eta**2, 0.0)) * sig_next * veps + eta * sig_next * vn
        m = self.svd.measured_view  # the measured block of the spectral array
        vx0_m, vn_m, out_m = m(vx0), m(vn), m(out)
        s, ybar = self.s, self.ybar
        if sig_y > 0:
            after = self.measured & (s * sig_next < sig_y)
            moved = vx0_m + math.sqrt(max(1 - eta**2, 0.0)) * sig_next * s * (ybar - vx0_m) / sig_y + eta * sig_next * vn_m
            out_m = torch.where(after, moved, out_m)
        else:
            after = torch.zeros_like(self.measured)
        before = self.measured & ~after
        spread = (sig_next**2 - (sig_y * eta_b / s.clamp(min=1e-300)) ** 2).clamp(min=0).sqrt()
        pulled = eta_b * ybar + (1 - eta_b) * vx0_m + spread * vn_m
        out_m = torch.where(before, pulled, out_m)
        out = self.svd.with_measured(out, out_m)
        return self.op.state((a_next * self.svd.V(out)).to(z.dtype))


class ILVR(ZeroShot):
    """ILVR (Choi et al. 2021): ``z' <- z' - A^+ A z' + A^+ A y'`` with ``y'`` the measurement noised to the next level.

    The noised measurement is ``alpha' A^+ y + sigma' A^+ A n`` (the reference ``A^+ y`` taken
    through the forward process and low-passed).
    """

    name = "ilvr"
    summary = "low-pass A^+A of the state replaced by the noised measurement's at each step"
    after_noise = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference = self.op.A_pinv(self.y)  # A^+ y, the same at every step

    def after(self, z_next, x0, i, noise, grad):  # type: ignore[no-untyped-def]
        a, s = self.schedule.alpha[i + 1], self.schedule.sigma[i + 1]
        known = a * self.reference
        if s > 0 and noise is not None:
            known = known + s * self.op.low_pass(noise)
        return z_next - self.op.low_pass(z_next) + known


class RePaint(ILVR):
    """RePaint (Lugmayr et al. 2022) for SR: ILVR's range replacement, each step redone ``jumps`` times.

    After step ``i`` (level ``i + 1``, range fixed) the state is noised back to level ``i`` by the
    forward transition and the step taken again, ``jumps - 1`` times (jump length 1).
    """

    name = "repaint"
    summary = "ILVR's range replacement, each step undone and redone `jumps` times"

    def check(self, stepper: Stepper) -> None:
        _single_step_only(self.name, stepper)



class DPS(ZeroShot):
    """DPS (Chung et al. 2023): after the step, ``z' -= zeta * grad_z ||y - A x0_hat(z)||`` (through the network)."""

    name = "dps"
    summary = "gradient of ||y - A x0_hat(z)|| through the network, step zeta"
    needs_grad = True

    def after(self, z_next, x0, i, noise, grad):  # type: ignore[no-untyped-def]
        if grad is None:
            raise ValueError("dps needs the gradient through the network")
        return z_next - self.options.zeta * grad


class GDP(ZeroShot):
    """GDP-x0 (Fei et al. 2023): the next state moved against ``grad_x0 ||y - A x0||^2`` at ``x0_hat``.

    The mean of the next state moves by ``scale * var_i * g``, ``var_i = (1 - ab') / (1 - ab) (1 - ab / ab')``
    the DDPM posterior variance of the step (GDP's variance-guided scale: large early, none at the
    clean end), ``g`` the gradient with respect to ``x0_hat`` (no pass back through the network).
    """

    name = "gdp"
    summary = "guidance on x0_hat with the operator applied, scaled by the step's posterior variance"

    def after(self, z_next, x0, i, noise, grad):  # type: ignore[no-untyped-def]
        sch = self.schedule
        ab, ab_next = sch.alpha[i] ** 2, sch.alpha[i + 1] ** 2
        var = (1 - ab_next) / max(1 - ab, 1e-12) * (1 - ab / ab_next)
        if var <= 0:
            return z_next
        residual = self.op.A(x0) - self.y
        g = 2 * self.op.state(self.op.operator.A_adjoint(residual))  # grad_x0 ||A x0 - y||^2
        return z_next - self.options.scale * var * g


METHODS: dict[str, type[ZeroShot]] = {cls.name: cls for cls in (DDNM, DDNMPlus, DDRM, ILVR, RePaint, DPS, GDP)}


def method_names() -> list[str]:
    """The zero-shot methods' names (the command line's choices)."""
    return list(METHODS)


def bind(
    options: ZeroShotOptions, operator: Operator, space: StateSpace, y: torch.Tensor, sigma_y: float, schedule: Schedule
) -> ZeroShot:
    """The method of ``options`` bound to the measurement ``y`` (normalised, ``(B, C, *lr)``) and ``schedule``.

    ``sigma_y`` is the measurement noise in normalised units.
    """
    op = StateOperator(operator, space, operator.hr_shape(y.shape[2:]))
    return METHODS[options.method](options, op, y, sigma_y, schedule)

