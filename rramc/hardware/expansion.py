"""Column sums as matmuls: a cell's current written as ``f(V, G) ≈ Σ_k φ_k(V)·ψ_k(G)``.

A crossbar column carries ``Σ_i f(V_i, G_i)``. With the expansion that is ``Σ_k φ_k(V) · ψ_k(G)``
summed over the rows: one matmul of the word lines' ``φ`` with the cells' ``ψ`` per term, never a
``batch × rows × columns`` tensor of cell currents.

* A separable device (``f = G·g(V)``) has one exact term: ``φ = g(V)``, ``ψ = G``.
* Any other device is factorised by a truncated SVD of ``f`` sampled on the voltages the chip
  applies (the DAC's codes, or a fine grid for an ideal DAC) × a fine grid of conductances over
  the programmable window. The rank is the smallest whose worst deviation from ``f`` stays below
  a tolerance that follows the converters: 1/64 of one ADC step (an ADC code changes only where
  the exact current lies that close to a rounding boundary), and 1e-7 of the full-scale cell
  current when the ADC is ideal. ``φ`` and ``ψ`` are tabulated on uniform grids and interpolated
  linearly, so they are cheap and differentiable; the measured error includes that
  interpolation, on every voltage that can occur. When no rank reaches the tolerance (the
  interpolation's own error floor, a tabulated device's kinks between grid voltages) the most
  accurate one is used and its error reported as above the tolerance.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rramc.hardware.devices import DeviceModel

IDEAL_TOLERANCE = 1e-7
"""Worst deviation allowed (relative to the full-scale cell current) when the ADC is ideal."""

MAX_TERMS = 16
SINGULAR_CUTOFF = 1e-12  # terms whose singular value is below this fraction of the first carry only rounding noise
VARIANCE_TOLERANCE = 1e-5  # read noise's variance (f²) needs no more: the noise's std is then off by 5e-6 of itself
VOLTAGE_GRID = 2049  # points over [0, v_max] when the DAC is ideal (8193 for tolerances below 1e-6)
CONDUCTANCE_GRID = 16384  # points of ψ's table (uniform in log G) across the window; more beyond it
CONDUCTANCE_SPAN = (1e-2, 4.0)  # ψ's table runs from g_min·1e-2 to g_max·4; linear to 0 below, extrapolated above
FIT_CONDUCTANCES = 513  # points over the window [g_min, g_max] the factorisation is fitted on


def tolerance_for(adc_bits: int | None) -> float:
    """The expansion error allowed under a ``adc_bits`` signed ADC: 1/64 of one of its steps
    (relative to a full-scale cell current), or :data:`IDEAL_TOLERANCE` without an ADC."""
    if adc_bits is None:
        return IDEAL_TOLERANCE
    return max(IDEAL_TOLERANCE, 1.0 / ((1 << (adc_bits - 1)) - 1) / 64.0)


class UniformTable:
    """Values ``[n, terms]`` on a uniform grid ``x0 … x1``, read by linear interpolation.

    Differentiable in ``x`` (the slope of the segment), extrapolated linearly beyond the grid.
    """

    def __init__(self, x0: float, x1: float, values: Tensor) -> None:
        self.x0, self.x1, self.n = x0, x1, values.shape[0]
        self.step = (x1 - x0) / (self.n - 1)
        self.values = values
        self.slopes = torch.cat([values[1:] - values[:-1], (values[-1] - values[-2])[None]])
        self._cast: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def _tables(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.dtype, x.device)
        if key not in self._cast:
            self._cast[key] = (self.values.to(dtype=x.dtype, device=x.device), self.slopes.to(dtype=x.dtype, device=x.device))
        return self._cast[key]

    def _rows(self, x: Tensor) -> Tensor:
        """``[n, 2·terms]``: each node's values and slopes in one row, read with one gather."""
        key = ("rows", x.dtype, x.device)
        if key not in self._cast:
            values, slopes = self._tables(x)
            self._cast[key] = (torch.cat([values, slopes], dim=1).contiguous(), values)
        return self._cast[key][0]

    def __call__(self, x: Tensor) -> Tensor:
        rows = self._rows(x)
        terms = rows.shape[1] // 2
        u = (x - self.x0) * (1.0 / self.step)
        i = u.detach().floor().clamp_(0, self.n - 2).int()
        gathered = torch.nn.functional.embedding(i, rows)
        return torch.addcmul(gathered[..., :terms], gathered[..., terms:], (u - i)[..., None])

    def terms_first(self, x: Tensor) -> Tensor:
        """The table read at every ``x`` within the grid, laid out ``[terms, *x.shape]``.

        The same values as ``__call__`` (moved to the front), computed with as few passes over
        ``x`` as possible: training reads it on every weight at every step.
        """
        return _TermsFirst.apply(x, self._rows(x), self.x0, 1.0 / self.step)


class _TermsFirst(torch.autograd.Function):
    """Linear interpolation in a uniform table whose rows hold each node's values and slopes
    ``[n, 2·terms]``; output ``[terms, *x.shape]``; the gradient in ``x`` is the segment's slope.
    ``x`` must lie in the table's range."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, rows: Tensor, x0: float,
                inverse_step: float) -> Tensor:  # type: ignore[override]
        terms = rows.shape[1] // 2
        u = x.sub(x0).mul_(inverse_step).clamp_(0.0, rows.shape[0] - 1)
        i = u.int().clamp_(max=rows.shape[0] - 2)
        fraction = u.sub_(i)
        gathered = torch.nn.functional.embedding(i, rows)  # [*x.shape, 2·terms]
        out = x.new_empty(terms, *x.shape)
        for k in range(terms):
            torch.addcmul(gathered[..., k], gathered[..., terms + k], fraction, out=out[k])
        ctx.save_for_backward(gathered)
        ctx.inverse_step = inverse_step  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (gathered,) = ctx.saved_tensors  # type: ignore[attr-defined]
        terms = gathered.shape[-1] // 2
        total = grad[0] * gathered[..., terms]
        for k in range(1, terms):
            total.addcmul_(grad[k], gathered[..., terms + k])
        return total.mul_(ctx.inverse_step), None, None, None  # type: ignore[attr-defined]


class LogTable:
    """Values ``[n, terms]`` of a function of ``G > 0`` tabulated uniformly in ``log G``, read by
    linear interpolation in ``log G``; below the grid the function is taken linear through 0 (a
    cell of no conductance carries no current), above it extrapolated.

    State-dependent devices change fastest at small ``G``, where a grid uniform in ``G`` would be
    coarsest; and the grid has nodes exactly at the window's ends, where device models put their
    kinks (a state-dependent nonlinearity is held constant outside its reference states).
    """

    def __init__(self, grid: Tensor, values: Tensor) -> None:
        self.g_lo = float(grid[0])
        self.table = UniformTable(math.log(float(grid[0])), math.log(float(grid[-1])), values)

    @staticmethod
    def grid(g_min: float, g_max: float) -> Tensor:
        """Nodes uniform in log G with g_min and g_max among them, spanning CONDUCTANCE_SPAN around them."""
        low = g_min if g_min > 0 else g_max * 1e-6
        inner = round(CONDUCTANCE_GRID / 2)
        step = math.log(g_max / low) / inner
        below = math.ceil(-math.log(CONDUCTANCE_SPAN[0]) / step)
        above = math.ceil(math.log(CONDUCTANCE_SPAN[1]) / step)
        return torch.exp(math.log(low) + step * torch.arange(-below, inner + above + 1, dtype=torch.float64))

    def __call__(self, g: Tensor) -> Tensor:
        values = self.table(torch.log(g.clamp_min(self.g_lo)))
        below = (g < self.g_lo)[..., None]
        return torch.where(below, values * (g / self.g_lo)[..., None], values)


@dataclass(frozen=True, eq=False)
class Expansion:
    """``f(V, G) ≈ Σ_k φ_k(V)·ψ_k(G)``, valid for ``0 ≤ V ≤ v_max`` (``None``: any voltage).

    ``voltage(v)`` and ``conductance(g)`` return the terms along a new last dimension.
    ``max_error`` is the measured worst deviation, relative to the largest cell current at the
    read voltage, over the applied voltages × the programmable window; ``tolerance`` the bound
    it was chosen for.
    """

    terms: int
    voltage: Callable[[Tensor], Tensor]
    conductance: Callable[[Tensor], Tensor]
    v_max: float | None
    max_error: float
    tolerance: float
    description: str
    exact: bool = False

    def current(self, v: Tensor, g: Tensor) -> Tensor:
        """The expansion evaluated elementwise (for checks; the runtime uses the terms in matmuls)."""
        return (self.voltage(v) * self.conductance(g)).sum(-1)

    def covers(self, v: Tensor) -> bool:
        """Whether every voltage in ``v`` lies where the expansion holds."""
        return self.v_max is None or float(v.detach().max()) <= self.v_max * (1 + 1e-6)


def separable(function: Callable[[Tensor], Tensor], description: str, power: int = 1) -> Expansion:
    """The exact one-term expansion ``g(V)·G**power`` of a separable device (``power=2``: of ``f²``)."""
    return Expansion(1, lambda v: function(v)[..., None], lambda g: (g if power == 1 else g * g)[..., None], None, 0.0, 0.0,
                     description, exact=True)


def low_rank(fn: Callable[[Tensor, Tensor], Tensor], voltages: Tensor, g_min: float, g_max: float, tolerance: float,
             description: str, *, discrete: bool = False) -> Expansion:
    """The truncated-SVD expansion of ``fn(V, G)`` for ``V`` in ``voltages`` (uniform from 0) and
    ``G`` over the window ``[g_min, g_max]``.

    ``discrete``: only these voltages are ever applied (a DAC's codes): the factorisation is
    fitted and measured on them exactly. Otherwise it is fitted on a coarser grid and ``φ`` is
    then fitted, by least squares over the conductances, on every voltage of ``voltages`` and
    interpolated between them; the error is measured between the nodes too.
    """
    v_max = float(voltages[-1])
    fit_v = voltages if discrete else torch.linspace(0.0, v_max, FIT_CONDUCTANCES, dtype=torch.float64)
    fit_g = torch.linspace(g_min, g_max, FIT_CONDUCTANCES, dtype=torch.float64)
    sampled = fn(fit_v[:, None], fit_g[None, :])  # [fit voltages, fit conductances]
    scale = float(fn(torch.tensor(v_max, dtype=torch.float64), torch.tensor(g_max, dtype=torch.float64)).abs())
    scale = scale or float(sampled.abs().max()) or 1.0
    basis, singular, right = torch.linalg.svd(sampled / scale, full_matrices=False)
    usable = int((singular > singular[0] * SINGULAR_CUTOFF).sum())
    table_g = LogTable.grid(g_min, g_max)
    on_table = fn(fit_v[:, None], table_g[None, :]).T  # [table conductances, fit voltages]
    on_voltages = None if discrete else fn(voltages[:, None], fit_g[None, :]) / scale  # [voltages, fit conductances]
    step = float(voltages[1] - voltages[0])
    check_v = voltages if discrete else torch.cat([voltages, voltages[:-1] + step / 2])  # nodes and every midpoint
    check_g = torch.cat([torch.linspace(g_min, g_max, FIT_CONDUCTANCES, dtype=torch.float64),
                         torch.logspace(math.log10(max(g_min, g_max * 1e-6)), math.log10(g_max), 257, dtype=torch.float64)])
    best: Expansion | None = None
    for terms in range(1, min(MAX_TERMS, usable) + 1):
        u = basis[:, :terms]
        # ψ_k(G) = Σ_v u_k(v)·f(v, G): the projection of f(·, G) on the voltage basis, tabulated in G
        conductance = LogTable(table_g, on_table @ u)
        if discrete:
            phi = u
        else:  # φ(v) that reproduces f(v, ·) on the fit conductances with these ψ: f(v, G)·V_k/σ_k
            phi = on_voltages @ (right[:terms].T / singular[:terms])  # type: ignore[operator]
        voltage = UniformTable(0.0, v_max, phi)
        error = _worst_error(fn, voltage, conductance, check_v, check_g) / scale
        candidate = Expansion(terms, voltage, conductance, v_max, error, tolerance, f"rank-{terms} factorisation ({description})")
        if best is None or error < best.max_error:
            best = candidate
        if error <= tolerance:
            break
    assert best is not None
    return best


def _worst_error(fn: Callable[[Tensor, Tensor], Tensor], voltage: UniformTable, conductance: LogTable, check_v: Tensor,
                 check_g: Tensor) -> float:
    """The largest ``|Σ_k φ_k(v)·ψ_k(g) - f(v, g)|`` over the grid, in chunks of voltages (memory stays small)."""
    psi = conductance(check_g)  # [conductances, terms]
    worst = 0.0
    for chunk in torch.split(check_v, 1024):
        approx = voltage(chunk) @ psi.T
        worst = max(worst, float((approx - fn(chunk[:, None], check_g[None, :])).abs().max()))
    return worst


@functools.lru_cache(maxsize=64)
def device_expansion(device: DeviceModel, read_voltage: float, g_min: float, g_max: float, dac_bits: int | None,
                     tolerance: float, squared: bool = False) -> Expansion:
    """The expansion the runtime uses for a device read at up to ``read_voltage`` through a
    ``dac_bits`` DAC (None: any voltage), accurate to ``tolerance`` (see :func:`tolerance_for`).

    ``squared``: of ``f²`` instead of ``f`` (the variance of read noise sums ``f²`` over a column).
    """
    if device.separable:
        if squared:
            return separable(lambda v: device.unit_current(v) ** 2, "exact: separable device", power=2)
        return separable(device.unit_current, "exact: separable device")
    discrete = dac_bits is not None and dac_bits <= 12
    if discrete:
        voltages = torch.arange((1 << dac_bits), dtype=torch.float64) / ((1 << dac_bits) - 1) * read_voltage
        where = f"the {1 << dac_bits} DAC voltages"
    else:
        points = VOLTAGE_GRID if tolerance >= 1e-6 else 4 * VOLTAGE_GRID - 3
        voltages = torch.linspace(0.0, read_voltage, points, dtype=torch.float64)
        where = f"{points} voltages up to {read_voltage:g} V"
    fn = (lambda v, g: device.current(v, g) ** 2) if squared else device.current
    what = "f²" if squared else "f"
    tolerance = max(tolerance, VARIANCE_TOLERANCE) if squared else tolerance
    return low_rank(fn, voltages, g_min, g_max, tolerance, f"of {what} on {where} × {FIT_CONDUCTANCES} conductances",
                    discrete=discrete)


def describe(expansion: Expansion) -> str:
    """One line for reports: how a column's current is computed and how far from exact."""
    if expansion.exact:
        return "one matmul per tile (separable device: exact)"
    within = "within" if expansion.max_error <= expansion.tolerance else "ABOVE"
    return (f"{expansion.terms} matmuls per tile, {expansion.description}; max error {expansion.max_error:.1e} of the "
            f"full-scale cell current ({within} the tolerance {expansion.tolerance:.1e})")
