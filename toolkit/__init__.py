"""diffsr's shared engine: operators, state spaces, processes, denoisers, samplers, guidance.

No file formats and no domain knowledge live here. Every tensor is ``(B, C, *spatial)``.
"""

from toolkit.operators import AreaDownsample, GaussianDownsample, Operator
from toolkit.process import GaussianProcess, Process
from toolkit.spaces import PixelSpace, ResidualSpace, StateSpace

__all__ = [
    "AreaDownsample",
    "GaussianDownsample",
    "GaussianProcess",
    "Process",
    "Operator",
    "PixelSpace",
    "ResidualSpace",
    "StateSpace",
]
