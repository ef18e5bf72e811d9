"""A target device's I-V family as a PNG: ``rramc plot-device``."""

from __future__ import annotations

import io
from pathlib import Path

from rramc.errors import RramcError
from rramc.hardware.target import Target, load_target


def plot_device(target: str | Path | Target, output: Path, states: int = 5) -> Path:
    """Draw the I-V curves of ``states`` conductances evenly spaced from g_min to g_max, 0 to 1.2·Vread,
    and mark the read voltage and the currents of g_min and g_max at it. Writes ``output`` atomically."""
    import torch
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rramc.runtime.file_format import write_atomically

    if states < 2:
        raise RramcError(f"--states {states}: draw at least 2 states (g_min and g_max)")
    output = Path(output)
    if not output.parent.is_dir():
        raise RramcError(f"--output {output}: directory {output.parent} does not exist")
    if isinstance(target, (str, Path)) and Path(target).is_file() and Path(target).resolve() == output.resolve():
        raise RramcError(f"--output {output} is the target file itself; choose another output file")
    chip = load_target(target)
    read = chip.crossbar.read_voltage
    g_min, g_max = chip.conductance.g_min, chip.conductance.g_max
    v = torch.linspace(0.0, 1.2 * read, 241, dtype=torch.float64)
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    for k, g in enumerate(torch.linspace(g_min, g_max, states, dtype=torch.float64).tolist()):
        i = chip.device.current(v, g)
        ax.plot(v.numpy(), 1e6 * i.numpy(), color=cmap(k / (states - 1)), label=f"G = {g * 1e6:.3g} µS")
    ax.axvline(read, color="grey", linestyle="--", linewidth=1, label=f"read voltage {read:g} V")
    for label, g in (("g_min", g_min), ("g_max", g_max)):
        i_read = float(chip.device.current(torch.tensor([read], dtype=torch.float64), g)[0])
        ax.plot([read], [1e6 * i_read], "o", color="black", markersize=5)
        ax.annotate(f"{label}: {i_read * 1e6:.3g} µA", (read, 1e6 * i_read), textcoords="offset points", xytext=(-8, 6),
                    ha="right", fontsize=8)
    ax.set_xlabel("voltage [V]")
    ax.set_ylabel("current [µA]")
    ax.set_title(f"{chip.name}: {chip.device.model} device, {g_min * 1e6:.3g}-{g_max * 1e6:.3g} µS", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_atomically(output, buffer.getvalue())
    return output
