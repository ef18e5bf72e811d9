"""Device I-V models: the current ``I = f(V, G)`` of a cell in conductance state ``G`` read at ``V``.

Every model is vectorised, broadcasting and differentiable torch code: the runtime, the
calibration and the ``reconstruct`` pass all evaluate cells through :meth:`DeviceModel.current`.
A model is *separable* when ``f(V, G) = G·g(V)``; then a crossbar column's current is one matmul
of ``g(V)`` with the conductances, and :meth:`DeviceModel.unit_current` gives ``g``.

Loading, validating and describing a target needs a few currents at its read voltage, not
tensors: :meth:`DeviceModel.current_at` gives one cell's current as a Python float, computed with
``math`` by every built-in model (the same formula, step for step, as its torch
:meth:`~DeviceModel.current`; ``tests/test_startup.py`` holds them equal). torch is bound on first
use (:mod:`rramc._lazy`), when a model first computes tensors, so ``rramc targets`` runs without it.
"""

from __future__ import annotations

import bisect
import csv
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rramc._lazy import lazy_import
from rramc.errors import TargetError
from rramc.hardware.config import Location, build, spec_field, to_mapping
from rramc.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch", globals())

PRECISIONS = ("float64", "float32")
"""The float types :meth:`DeviceModel.current_at` computes in: float64 (what the mapping and the
target's checks use) and float32 (what the chip runs in by default)."""

_FLOAT32 = struct.Struct("f")


def _as_float64(x: float) -> float:
    return x


def _as_float32(x: float) -> float:
    """``x`` rounded to the nearest float32 (±inf beyond its range, as a cast to it gives)."""
    try:
        return float(_FLOAT32.unpack(_FLOAT32.pack(x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def rounding(precision: str) -> Callable[[float], float]:
    """What ``precision`` arithmetic makes of an exact result: float64 (Python's floats) keeps it,
    float32 rounds it to the nearest float32 and to ±inf beyond float32's range."""
    if precision == "float64":
        return _as_float64
    if precision == "float32":
        return _as_float32
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


def _sinh(x: float, r: Callable[[float], float]) -> float:
    """``sinh(x)`` rounded by ``r`` (:func:`rounding`), and ±inf where ``exp(|x|)`` overflows there:
    torch's vectorised kernels, which evaluate tensors of cells, compute it through ``exp(|x|)``
    and overflow a little before ``sinh`` itself would (in float32 from ``|x| = 88.72``, not 89.42)."""
    try:
        if not math.isinf(r(math.exp(abs(x)))):
            return r(math.sinh(x))
    except OverflowError:
        pass
    return math.copysign(math.inf, x)


def _power(base: float, exponent: float) -> float:
    """``base ** exponent`` for ``base >= 0``, inf where it overflows (as torch's does) instead of raising."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def linspace(start: float, end: float, steps: int) -> list[float]:
    """``steps >= 2`` evenly spaced Python floats from ``start`` to ``end``, both ends exact."""
    step = (end - start) / (steps - 1)
    return [start + step * k for k in range(steps - 1)] + [end]


@dataclass(frozen=True)
class DeviceContext:
    """What a device spec may default to from the rest of its target."""

    read_voltage: float
    g_min: float
    g_max: float
    directory: Path | None = None


class DeviceModel(ABC):
    """Base of the I-V models. Subclasses are frozen dataclasses of their YAML fields."""

    model: ClassVar[str]
    separable: ClassVar[bool]

    @abstractmethod
    def current(self, v: Tensor, g: Tensor | float) -> Tensor:
        """Cell current [A] for voltages ``v`` [V] and conductances ``g`` [S], elementwise."""

    def current_at(self, v: float, g: float, precision: str = "float64") -> float:
        """The current [A] of one cell at voltage ``v`` [V] and conductance ``g`` [S], as a Python float.

        What loading, validating and describing a target use (no tensors, no torch). ``precision``
        is the float type to compute in (one of :data:`PRECISIONS`): with ``"float32"`` the inputs and
        every intermediate result are rounded to float32, so the current overflows to ``inf`` (or
        becomes NaN) where the chip's float32 arithmetic would.

        The built-in models compute it with ``math``, following :meth:`current`'s formula step by
        step; this default evaluates :meth:`current` on one-element tensors, so a plugin's model
        needs no float path of its own (it then imports torch).
        """
        rounding(precision)  # refuses a precision that is not one of PRECISIONS
        dtype = getattr(torch, precision)
        with torch.no_grad():
            return float(self.current(torch.tensor([v], dtype=dtype), torch.tensor([g], dtype=dtype))[0])

    def slope(self, v: Tensor, g: Tensor | float) -> Tensor:
        """Differential conductance ``∂I/∂V`` [S] at voltages ``v`` and conductances ``g``, elementwise.

        What a circuit solver linearises the cell with; from autograd unless a model knows it.
        """
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            current = self.current(v, g.detach() if isinstance(g, torch.Tensor) else g)
            (slope,) = torch.autograd.grad(current.sum(), v)
        return slope

    def unit_current(self, v: Tensor) -> Tensor:
        """``g(V)`` of a separable model: the current of a 1 S cell."""
        if not self.separable:
            raise TypeError(f"device model '{self.model}' is not separable: its current is not G·g(V)")
        return self.current(v, 1.0)

    def non_differentiable_field(self) -> str | None:
        """The field that makes this device unusable for gradient training, if any."""
        return None

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: Location, ctx: DeviceContext) -> DeviceModel:
        return build(cls, data, where)

    def to_mapping(self) -> dict[str, Any]:
        """A self-contained YAML mapping of this device (``model`` first)."""
        return {"model": self.model, **{k: v for k, v in to_mapping(self).items() if v is not None}}


def sinh_b_from_k(k: float, voltage: float) -> float:
    """``B`` [1/V] of ``I ∝ sinh(B·V)`` whose half-bias nonlinearity ``I(V)/I(V/2)`` is ``k``.

    ``I(V)/I(V/2) = sinh(BV)/sinh(BV/2) = 2·cosh(BV/2)``, so ``B = 2·acosh(k/2)/V``; ``k = 2`` is linear.
    """
    return 2.0 * math.acosh(k / 2.0) / voltage


def v_sinhc(v: Tensor, b: Tensor | float) -> Tensor:
    """``sinh(b·v)/b``, equal to ``v`` at ``b = 0`` and smooth (with gradients) through it."""
    if not isinstance(b, torch.Tensor):  # one coefficient: sinh of a small argument is accurate, only b = 0 needs care
        return v.clone() if b == 0 else torch.sinh(v * b).mul_(1.0 / b)
    z = v * b
    small = z.abs() < 1e-4
    safe_z = torch.where(small, torch.ones_like(z), z)
    sinhc = torch.where(small, 1.0 + z * z / 6.0, torch.sinh(safe_z) / safe_z)
    return v * sinhc


@dataclass(frozen=True)
class LinearDevice(DeviceModel):
    """``I = G·V``: the ideal Ohmic cell, for validation."""

    model: ClassVar[str] = "linear"
    separable: ClassVar[bool] = True

    def current(self, v: Tensor, g: Tensor | float) -> Tensor:
        return v * g

    def current_at(self, v: float, g: float, precision: str = "float64") -> float:
        r = rounding(precision)
        return r(r(v) * r(g))

    def slope(self, v: Tensor, g: Tensor | float) -> Tensor:
        return torch.ones_like(v) * g


@dataclass(frozen=True)
class SinhDevice(DeviceModel):
    """``I = G·sinh(B·V)/B``: the nonlinear (selector-like) cell of Kim et al.

    Give either ``b`` or the half-bias nonlinearity ``nonlinearity_k = I(Vk)/I(Vk/2)`` at
    ``k_voltage`` (which defaults to the target's read voltage).
    """

    model: ClassVar[str] = "sinh"
    separable: ClassVar[bool] = True
    nonlinearity_k: float | None = spec_field(
        "half-bias nonlinearity I(Vk)/I(Vk/2); 2 is linear", low=2.0, high=1e4, default=None
    )
    k_voltage: float | None = spec_field(
        "voltage Vk at which nonlinearity_k is defined; default: the read voltage",
        unit="V", low=0.0, low_open=True, high=100.0, default=None,
    )
    b: float | None = spec_field("sinh coefficient B; give this or nonlinearity_k", unit="1/V", low=0.0, high=100.0, default=None)

    def __post_init__(self) -> None:
        if (self.b is None) == (self.nonlinearity_k is None):
            raise ValueError("give exactly one of 'b' and 'nonlinearity_k'")
        if self.b is not None and self.k_voltage is not None:
            raise ValueError("'k_voltage' only goes with 'nonlinearity_k'")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: Location, ctx: DeviceContext) -> DeviceModel:
        if data.get("nonlinearity_k") is not None and data.get("k_voltage") is None:  # absent or null: the default
            data = {**data, "k_voltage": ctx.read_voltage}
        return build(cls, data, where)

    @property
    def b_per_volt(self) -> float:
        if self.b is not None:
            return self.b
        assert self.nonlinearity_k is not None and self.k_voltage is not None
        return sinh_b_from_k(self.nonlinearity_k, self.k_voltage)

    def current(self, v: Tensor, g: Tensor | float) -> Tensor:
        return g * v_sinhc(v, self.b_per_volt)

    def current_at(self, v: float, g: float, precision: str = "float64") -> float:
        r, b = rounding(precision), self.b_per_volt
        v, g = r(v), r(g)
        if b == 0:
            return r(g * v)
        return r(g * r(_sinh(r(v * b), r) * (1.0 / b)))  # as v_sinhc: sinh(v·b)·(1/b), then times G

    def slope(self, v: Tensor, g: Tensor | float) -> Tensor:
        return g * torch.cosh(v * self.b_per_volt)

    def unit_current(self, v: Tensor) -> Tensor:
        return v_sinhc(v, self.b_per_volt)


@dataclass(frozen=True)
class StateDependentSinhDevice(DeviceModel):
    """``I = G·sinh(B(G)·V)/B(G)`` with ``B`` interpolated linearly in ``log G`` between two states.

    High-resistance states of filamentary RRAM conduct more through tunnelling/hopping and are
    more nonlinear than low-resistance ones; so ``nonlinearity_k_hrs`` (at ``g_hrs``) is usually
    larger than ``nonlinearity_k_lrs`` (at ``g_lrs``). Outside that range ``B`` is held constant.
    Interpolating in ``log G`` spreads the change over the decades the window spans. The spec is
    refused if the read current does not rise with ``G`` (a state would then be ambiguous).
    Not separable: a column's current is not ``g(V)·ΣG``.
    """

    model: ClassVar[str] = "sinh_state"
    separable: ClassVar[bool] = False
    nonlinearity_k_hrs: float = spec_field("half-bias nonlinearity at the high-resistance state g_hrs", low=2.0, high=1e4)
    nonlinearity_k_lrs: float = spec_field("half-bias nonlinearity at the low-resistance state g_lrs", low=2.0, high=1e4)
    k_voltage: float = spec_field("voltage at which the nonlinearities are defined; default: the read voltage", unit="V", low=0.0, low_open=True, high=100.0)
    g_hrs: float = spec_field("conductance of the high-resistance reference state; default: g_min", unit="S", low=0.0, low_open=True, high=1.0)
    g_lrs: float = spec_field("conductance of the low-resistance reference state; default: g_max", unit="S", low=0.0, high=1.0)

    def __post_init__(self) -> None:
        if not self.g_lrs > self.g_hrs:
            raise ValueError(f"g_lrs ({self.g_lrs:g} S) must be above g_hrs ({self.g_hrs:g} S)")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: Location, ctx: DeviceContext) -> DeviceModel:
        defaults = {"k_voltage": ctx.read_voltage, "g_hrs": max(ctx.g_min, 1e-12), "g_lrs": ctx.g_max}
        device = build(cls, {**defaults, **data}, where)
        g = [10.0**x for x in linspace(math.log10(device.g_hrs), math.log10(device.g_lrs), 512)]  # evenly spaced in log G
        i = [device.current_at(ctx.read_voltage, gk) for gk in g]
        falling = next((k for k in range(len(i) - 1) if i[k + 1] <= i[k]), None)
        if falling is not None:
            at = g[falling]
            raise where.error(f"the read current must rise with G, but with these nonlinearities it falls above G = {at:.3g} S; "
                              "bring nonlinearity_k_hrs and nonlinearity_k_lrs closer together")
        return device

    def b_of(self, g: Tensor) -> Tensor:
        """``B(G)`` [1/V]."""
        b_hrs = sinh_b_from_k(self.nonlinearity_k_hrs, self.k_voltage)
        b_lrs = sinh_b_from_k(self.nonlinearity_k_lrs, self.k_voltage)
        log_g = torch.log(g.clamp_min(self.g_hrs))
        t = ((log_g - math.log(self.g_hrs)) / math.log(self.g_lrs / self.g_hrs)).clamp(0.0, 1.0)
        return b_hrs + t * (b_lrs - b_hrs)

    def b_at(self, g: float, precision: str = "float64") -> float:
        """``B(G)`` [1/V] of one conductance: :meth:`b_of` in Python floats."""
        r = rounding(precision)
        b_hrs = sinh_b_from_k(self.nonlinearity_k_hrs, self.k_voltage)
        b_lrs = sinh_b_from_k(self.nonlinearity_k_lrs, self.k_voltage)
        log_g = r(math.log(max(r(g), r(self.g_hrs))))
        t = min(max(r(r(log_g - math.log(self.g_hrs)) / math.log(self.g_lrs / self.g_hrs)), 0.0), 1.0)
        return r(b_hrs + r(t * (b_lrs - b_hrs)))

    def current(self, v: Tensor, g: Tensor | float) -> Tensor:
        g = torch.as_tensor(g, dtype=v.dtype, device=v.device)
        return g * v_sinhc(v, self.b_of(g))

    def current_at(self, v: float, g: float, precision: str = "float64") -> float:
        r = rounding(precision)
        v, g = r(v), r(g)
        z = r(v * self.b_at(g, precision))  # as v_sinhc with a tensor of B: v·sinhc(z), then times G
        sinhc = r(1.0 + r(r(z * z) / 6.0)) if abs(z) < 1e-4 else r(_sinh(z, r) / z)
        return r(g * r(v * sinhc))

    def slope(self, v: Tensor, g: Tensor | float) -> Tensor:
        g = torch.as_tensor(g, dtype=v.dtype, device=v.device)
        return g * torch.cosh(v * self.b_of(g))


@dataclass(frozen=True)
class PowerDevice(DeviceModel):
    """``I = G·Vref·sign(V)·|V/Vref|^a``: a power-law cell (``a = 1`` is linear)."""

    model: ClassVar[str] = "power"
    separable: ClassVar[bool] = True
    exponent: float = spec_field("power-law exponent a", low=0.0, low_open=True, high=10.0)
    v_ref: float = spec_field("voltage at which the cell passes G·Vref; default: the read voltage", unit="V", low=0.0, low_open=True, high=100.0)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: Location, ctx: DeviceContext) -> DeviceModel:
        return build(cls, {"v_ref": ctx.read_voltage, **data}, where)

    def current(self, v: Tensor, g: Tensor | float) -> Tensor:
        return g * self.v_ref * torch.sign(v) * (v.abs() / self.v_ref) ** self.exponent

    def current_at(self, v: float, g: float, precision: str = "float64") -> float:
        r = rounding(precision)
        v, g = r(v), r(g)
        sign = math.copysign(1.0, v) if v != 0 else 0.0  # torch.sign
        return r(r(r(g * self.v_ref) * sign) * r(_power(r(abs(v) / self.v_ref), self.exponent)))

    def non_differentiable_field(self) -> str | None:
        # d/dV |V|^a is unbounded at V = 0 for a < 1: gradients through such cells blow up.
        return "exponent" if self.exponent < 1.0 else None


@dataclass(frozen=True)
class TableDevice(DeviceModel):
    """Measured I-V sweeps at several states, interpolated bilinearly in ``V`` and ``G``.

    YAML: ``file:`` a CSV next to the target whose header is ``voltage,<G1>,<G2>,...`` (the
    states' conductances in S, rising) and whose rows are a voltage [V] and the currents [A] of
    each state at it. Executables embed the data (``voltages``, ``states``, ``currents``).
    """

    model: ClassVar[str] = "table"
    separable: ClassVar[bool] = False
    voltages: tuple[float, ...] = field(default=())
    states: tuple[float, ...] = field(default=())
    currents: tuple[tuple[float, ...], ...] = field(default=())
    file: str | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: Location, ctx: DeviceContext) -> DeviceModel:
        data = dict(data)
        if "file" in data:
            if set(data) != {"file"}:
                raise where.error("a table device takes 'file' alone, or 'voltages', 'states' and 'currents'")
            path = Path(str(data["file"]))
            if not path.is_absolute() and ctx.directory is not None:
                path = ctx.directory / path
            data = _read_iv_csv(path, where.child("file"))
            file = str(path)
        else:
            file = None
            missing = {"voltages", "states", "currents"} - set(data)
            if missing or set(data) - {"voltages", "states", "currents"}:
                raise where.error("a table device takes 'file', or exactly 'voltages', 'states' and 'currents'")
        try:
            voltages = tuple(_number(v) for v in data["voltages"])
            states = tuple(_number(s) for s in data["states"])
            currents = tuple(tuple(_number(i) for i in row) for row in data["currents"])
        except (TypeError, ValueError, OverflowError):
            raise where.error("voltages, states and currents must be lists of numbers (currents: one list per voltage)") from None
        for name, values in (("voltages", voltages), ("states", states)):
            bad = next((k for k, x in enumerate(values) if not math.isfinite(x)), None)
            if bad is not None:
                raise where.child(name).error(f"entry {bad} is {values[bad]}; every value must be a finite number")
        for r, row in enumerate(currents):
            bad = next((k for k, x in enumerate(row) if not math.isfinite(x)), None)
            if bad is not None:
                at = f" (at {voltages[r]:g} V)" if r < len(voltages) else ""
                raise where.child("currents").error(f"row {r}{at}, entry {bad}: {row[bad]}; every current must be a finite number")
        _check_table(voltages, states, currents, ctx, where)
        return cls(voltages=voltages, states=states, currents=currents, file=file)

    def to_mapping(self) -> dict[str, Any]:
        return {"model": self.model, "voltages": list(self.voltages), "states": list(self.states),
                "currents": [list(r) for r in self.currents]}

    def current(self, v: Tensor, g: Tensor | float) -> Tensor:
        g = torch.as_tensor(g, dtype=v.dtype, device=v.device)
        v, g = torch.broadcast_tensors(v, g)
        grid_v = torch.tensor(self.voltages, dtype=v.dtype, device=v.device)
        grid_g = torch.tensor(self.states, dtype=v.dtype, device=v.device)
        table = torch.tensor(self.currents, dtype=v.dtype, device=v.device)  # [voltages, states]
        iv, tv = _bracket(grid_v, v)
        ig, tg = _bracket(grid_g, g)
        n_states = len(self.states)

        def at(i: Tensor, j: Tensor) -> Tensor:
            return table.reshape(-1)[i * n_states + j]

        low = at(iv, ig) * (1 - tg) + at(iv, ig + 1) * tg
        high = at(iv + 1, ig) * (1 - tg) + at(iv + 1, ig + 1) * tg
        return low * (1 - tv) + high * tv

    def current_at(self, v: float, g: float, precision: str = "float64") -> float:
        # current's bilinear interpolation, operation for operation (so equal to it in float64)
        r = rounding(precision)
        iv, tv = _bracket_at([r(x) for x in self.voltages], r(v), r)
        ig, tg = _bracket_at([r(x) for x in self.states], r(g), r)
        (a, b), (c, d) = ([r(i) for i in row[ig : ig + 2]] for row in self.currents[iv : iv + 2])
        low = r(r(a * r(1 - tg)) + r(b * tg))
        high = r(r(c * r(1 - tg)) + r(d * tg))
        return r(r(low * r(1 - tv)) + r(high * tv))


def _bracket(grid: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the grid interval holding ``x`` (clamped to the grid) and the position in it."""
    x = x.clamp(grid[0], grid[-1])
    i = (torch.searchsorted(grid, x.detach().contiguous(), right=True) - 1).clamp(0, len(grid) - 2)
    t = (x - grid[i]) / (grid[i + 1] - grid[i])
    return i, t


def _bracket_at(grid: Sequence[float], x: float, r: Callable[[float], float]) -> tuple[int, float]:
    """:func:`_bracket` of one value: the interval's index and the position in it."""
    x = min(max(x, grid[0]), grid[-1])
    i = min(max(bisect.bisect_right(grid, x) - 1, 0), len(grid) - 2)
    return i, r(r(x - grid[i]) / r(grid[i + 1] - grid[i]))


def _number(value: Any) -> float:
    """A number of an inline table; not a string (``float("1")`` would pass one), not a bool."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def _read_iv_csv(path: Path, where: Location) -> dict[str, Any]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            rows = []  # (line number in the file, cells), comment and blank lines left out
            for r in reader:
                if r and not r[0].lstrip().startswith("#"):
                    rows.append((reader.line_num, r))
    except OSError as exc:
        raise where.error(f"cannot read the I-V table {path}: {exc.strerror or exc}") from None
    except (ValueError, csv.Error) as exc:  # not UTF-8 text (UnicodeDecodeError), a NUL byte, a path with a NUL
        raise where.error(f"cannot read the I-V table {path}: not a CSV text file ({exc})") from None
    if len(rows) < 3 or len(rows[0][1]) < 3:
        raise where.error(f"{path}: expected a header 'voltage,<G1>,<G2>,...' and at least two rows of two or more states")
    header_line, header = rows[0]
    columns = ["voltage"] + [f"state {s.strip()}" for s in header[1:]]

    def number(text: str, line: int, column: int, what: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise where.error(f"{path}, line {line}, column {column + 1} ({what}): not a number: {text!r}") from None
        if not math.isfinite(value):
            raise where.error(f"{path}, line {line}, column {column + 1} ({what}): {text.strip()!r} is not a finite number; "
                              "every voltage, state and current must be one") from None
        return value

    states = [number(s, header_line, k + 1, "the header's conductance of a state [S]") for k, s in enumerate(header[1:])]
    body = []
    for line, r in rows[1:]:
        if len(r) != len(header):
            raise where.error(f"{path}, line {line}: {len(r)} values; every row needs {len(header)} "
                              f"(a voltage and {len(header) - 1} currents)")
        body.append([number(x, line, k, columns[k] + (" [V]" if k == 0 else " current [A]")) for k, x in enumerate(r)])
    return {"voltages": [r[0] for r in body], "states": states, "currents": [r[1:] for r in body]}


def _check_table(voltages: tuple[float, ...], states: tuple[float, ...], currents: tuple[tuple[float, ...], ...],
                 ctx: DeviceContext, where: Location) -> None:
    if len(voltages) < 2 or len(states) < 2:
        raise where.error("an I-V table needs at least two voltages and two states")
    if any(b <= a for a, b in zip(voltages, voltages[1:])) or any(b <= a for a, b in zip(states, states[1:])):
        raise where.error("the table's voltages and states must rise strictly")
    if len(currents) != len(voltages) or any(len(r) != len(states) for r in currents):
        raise where.error(f"currents must be a {len(voltages)}×{len(states)} table (voltages × states)")
    if voltages[0] > 0.0 or voltages[-1] < ctx.read_voltage:
        raise where.error(f"the table's voltages [{voltages[0]:g}, {voltages[-1]:g}] V must cover 0 to the read voltage {ctx.read_voltage:g} V")
    if states[0] > ctx.g_min or states[-1] < ctx.g_max:
        raise where.error(f"the table's states [{states[0]:g}, {states[-1]:g}] S must cover g_min..g_max [{ctx.g_min:g}, {ctx.g_max:g}] S")
    device = TableDevice(voltages=voltages, states=states, currents=currents)
    tiny = 1e-9 * max(abs(i) for row in currents for i in row)
    if any(abs(device.current_at(0.0, g)) > tiny for g in states):
        raise where.error("every state must carry zero current at 0 V (unselected word lines must not inject current)")
    opposed = next(((v, g) for v, row in zip(voltages, currents) for g, i in zip(states, row) if v * i < -tiny), None)
    if opposed is not None:
        raise where.error(f"the current opposes the voltage at {opposed[0]:g} V, state {opposed[1]:g} S: "
                          "a passive cell's current has the sign of its voltage")
    read = [device.current_at(ctx.read_voltage, g) for g in linspace(ctx.g_min, ctx.g_max, 257)]
    if any(b <= a for a, b in zip(read, read[1:])):
        raise where.error(f"the current at the read voltage {ctx.read_voltage:g} V must rise with G over g_min..g_max; "
                          "otherwise a conductance cannot be told from its read current")


DEVICE_MODELS: Registry[type[DeviceModel]] = Registry(
    what="device model",
    group="rramc.device_models",
    builtins={
        "linear": "rramc.hardware.devices:LinearDevice",
        "sinh": "rramc.hardware.devices:SinhDevice",
        "sinh_state": "rramc.hardware.devices:StateDependentSinhDevice",
        "power": "rramc.hardware.devices:PowerDevice",
        "table": "rramc.hardware.devices:TableDevice",
    },
    error=TargetError,
)
