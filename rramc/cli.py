"""The ``rramc`` command line: compile, run, inspect, passes, targets, demo."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rramc.errors import RramcError, RramcWarning

app = typer.Typer(
    name="rramc",
    help="Compile PyTorch networks for RRAM crossbar chips and simulate them with nonlinear device I-V.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

FLAG = ""
"""The metavar of boolean flags: they take no value, so their help shows none (typer would print <bool>)."""

SEED_MAX = 2**63 - 1
"""torch generators take seeds up to a signed 64-bit integer."""


def reports_errors(command: F) -> F:
    """Print rramc's own errors as one message without a traceback, and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RramcError as exc:
            errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            errors.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _parse_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(s) for s in text.split(","))
    except ValueError:
        raise RramcError(f"--input-range {text!r}: expected LOW,HIGH, e.g. 0,1") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise RramcError(f"--input-range {text!r}: expected finite LOW < HIGH")
    return (low, high)


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise RramcError(f"--input-shape {text!r}: expected sizes separated by commas, e.g. 1,28,28") from None
    if not shape or min(shape) < 1:
        raise RramcError(f"--input-shape {text!r}: sizes must be positive")
    return shape


DatasetOption = Annotated[Optional[str], typer.Option("--dataset", "-d", help="digits, mnist, fashion-mnist, cifar10, or your "
                                                      "own data: a .npz or .pt file (images, labels) or a folder of images "
                                                      "with one subfolder per class (README: 'Your own data')")]
DataDirOption = Annotated[Optional[Path], typer.Option("--data-dir", help="directory with the data set's files")]
TrustDataOption = Annotated[bool, typer.Option("--trust-data", help="allow a .pt data file that holds pickled Python objects "
                                               "(loading it runs code from the file)", metavar=FLAG)]


@app.command()
@reports_errors
def compile(
    model: Annotated[Path, typer.Argument(help="a .pt2 torch.export archive, a state_dict file (with --model) or a pickled module (with --trust-pickle)")],
    target: Annotated[str, typer.Option("--target", "-t", help="target YAML file or builtin name (ideal, rram_a, rram_b)")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="executable file to write [default: MODEL's name with .rramx]")] = None,
    factory: Annotated[Optional[str], typer.Option("--model", "-m", help="module:function building the network, for a state_dict")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="allow loading a pickled nn.Module (runs code from the file)", metavar=FLAG)] = False,
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", help="per-sample input shape, e.g. 1,28,28 [default: the data set's]")] = None,
    input_range: Annotated[Optional[str], typer.Option("--input-range", help="range of the network's input values, LOW,HIGH, e.g. 0,1 [default: the calibration data's; without data, -1,1]")] = None,
    calibration: Annotated[Optional[str], typer.Option("--calibration", "-c", help="data to calibrate on: a builtin data set (its train split), a .npz or .pt file or an image folder [default: the data set the .pt2 records, else none: ranges from the weights]")] = None,
    data_dir: DataDirOption = None,
    trust_data: TrustDataOption = False,
    calibration_samples: Annotated[int, typer.Option(help="calibration samples")] = 512,
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", help="a named pipeline: default, naive, least_squares, reconstruct")] = None,
    passes: Annotated[Optional[str], typer.Option("--passes", "-p", help="pipeline text, e.g. 'canonicalize,quantize{levels=16},tile,calibrate,emit'")] = None,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", help="skip a pass of the pipeline (repeatable)")] = None,
    print_ir: Annotated[bool, typer.Option("--print-ir", help="print the IR after every pass", metavar=FLAG)] = False,
    time_passes: Annotated[bool, typer.Option("--time-passes", help="print how long each pass took", metavar=FLAG)] = False,
    seed: Annotated[int, typer.Option(help="seed for passes that draw random numbers", min=0, max=SEED_MAX)] = 0,
    reconstruct: Annotated[bool, typer.Option("--reconstruct", help="retrain the network through the target's device I-V (Kim et al.)", metavar=FLAG)] = False,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="training data for --reconstruct: a builtin data set, a .npz or .pt file or an image folder [default: the calibration data]")] = None,
    epochs: Annotated[int, typer.Option(help="--reconstruct: training epochs")] = 3,
    optimizer: Annotated[str, typer.Option(help="--reconstruct: adam, or sgd (momentum 0.9)")] = "adam",
    lr: Annotated[Optional[float], typer.Option(help="--reconstruct: learning rate [default: 0.001 adam, 0.05 sgd]")] = None,
    batch_size: Annotated[int, typer.Option(help="--reconstruct: samples per step")] = 128,
    init: Annotated[str, typer.Option(help="--reconstruct: finetune the trained weights or train from scratch")] = "finetune",
    train_samples: Annotated[Optional[int], typer.Option(help="--reconstruct: use at most this many training samples")] = None,
    in_loop: Annotated[Optional[str], typer.Option(help="--reconstruct: also train through levels,converters,variation,wires (comma-separated)")] = None,
    device: Annotated[str, typer.Option(help="--reconstruct: torch device to train on (cpu, cuda, cuda:1)")] = "cpu",
    pass_files: Annotated[Optional[list[Path]], typer.Option("--pass-file", help="a local .py file defining rramc.Pass subclasses, usable in --passes (repeatable; runs its code)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing output that is not an executable compiled from MODEL", metavar=FLAG)] = False,
    exact_weights: Annotated[bool, typer.Option("--exact-weights", help="keep the float reference weights exactly in the file [default: for a target whose cells have levels, 12-bit fixed point per output, error below 1/2047 of its largest weight]", metavar=FLAG)] = False,
) -> None:
    """Compile MODEL for a target into one executable file."""
    import warnings

    output = output if output is not None else Path(model.name).with_suffix(".rramx")
    check_output(output, "--output", "executable", force, inputs=(model, target), source=model)
    if calibration_samples < 1:
        raise RramcError(f"--calibration-samples {calibration_samples}: need at least 1 sample to calibrate on")

    from rramc.driver import compile_file
    from rramc.pipeline import PIPELINES, PrintIR, load_pass_file

    for path in pass_files or ():
        load_pass_file(path)

    if pipeline is not None and passes is not None:
        raise RramcError("give --pipeline NAME or --passes TEXT, not both")
    if pipeline is not None and pipeline not in PIPELINES.names():
        raise RramcError(f"--pipeline {pipeline!r}: unknown pipeline; known: {', '.join(PIPELINES.names())} "
                         "(a list of passes goes to --passes)")
    training = {"epochs": (epochs, 3), "optimizer": (optimizer, "adam"), "lr": (lr, None), "batch-size": (batch_size, 128),
                "init": (init, "finetune"), "train-samples": (train_samples, None), "in-loop": (in_loop, None),
                "device": (device, "cpu")}
    if pipeline == "reconstruct":  # the named pipeline is what --reconstruct runs: its options apply
        reconstruct, pipeline = True, None
    options = None
    if reconstruct:
        options = {"epochs": epochs, "optimizer": optimizer, "lr": lr, "batch_size": batch_size, "seed": seed, "init": init,
                   "samples": train_samples, "device": _torch_device(device), **_in_loop(in_loop)}
        options = {k: v for k, v in options.items() if v is not None}
    else:
        given = [f"--{name}" for name, (value, default) in training.items() if value != default]
        if given:
            raise RramcError(f"{', '.join(given)} configure --reconstruct (or --pipeline reconstruct); without it they would be "
                             "ignored. In pipeline text, set them on the pass: reconstruct{epochs=1,...}")
    printing = [PrintIR(lambda name, text: console.print(f"[bold]// IR after {name}[/]\n{text}", highlight=False))] if print_ir else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RramcWarning)  # printed below, once, on stderr
        exe = compile_file(model, target, factory=factory, trust_pickle=trust_pickle, input_shape=_parse_shape(input_shape),
                           input_range=_parse_range(input_range),
                           calibration=calibration, calibration_samples=calibration_samples, data_dir=data_dir,
                           training=dataset, trust_data=trust_data, reconstruct=options,
                           pipeline=passes if passes is not None else pipeline,
                           skip=skip or (), instruments=printing, seed=seed, exact_weights=exact_weights, progress=sys.stderr.isatty(),
                           log=lambda text: console.print(text, highlight=False))
    exe.save(output)
    _warn(exe.metadata.get("warnings", []))
    spec = exe.target.crossbar
    console.print(f"wrote {output}: {exe.array_count()} arrays of {spec.rows}×{spec.cols} "
                  f"for target {exe.target.name} ({exe.compile_seconds or 0:.2f} s)")
    if time_passes:
        table = Table("pass", "seconds")
        for name, seconds in exe.pass_seconds.items():
            table.add_row(name, f"{seconds:.4f}")
        console.print(table)


def _warn(messages: list[str]) -> None:
    """What the user should not trust without a look, on stderr (the report also shows it)."""
    for text in messages:
        errors.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def check_output(path: Path, option: str, kind: str, force: bool, *, inputs: tuple[Path | str, ...] = (),
                 source: Path | None = None) -> None:
    """Refuse, before any work, an output file that cannot be written or must not be replaced.

    Never one of the command's own inputs; never a folder or a file in a missing folder; an
    existing file only when it is of the same ``kind`` (see :func:`rramc.outputs.kind_of`) and,
    for an executable, compiled from a model of the same name as ``source`` — otherwise only with
    ``--force``: ``model.pt`` and ``model.pt2`` both default to ``model.rramx``.
    """
    from rramc.outputs import describe_kind, executable_source, kind_of

    if str(path) in ("", "."):  # Path("") is Path("."): the two cannot be told apart
        raise RramcError(f"{option} is empty (or '.'): give a file name")
    if path.is_dir():
        raise RramcError(f"{option} {path} is a folder: give a file name inside it")
    if not path.parent.is_dir():
        raise RramcError(f"{option} {path}: folder {path.parent} does not exist")
    if not path.exists():
        return
    for given in inputs:
        given = Path(given)
        if given.exists() and path.resolve() == given.resolve():
            raise RramcError(f"{option} {path} is an input of this command ({given}); choose another output file")
    if force:
        return
    try:
        found = kind_of(path)
    except OSError as exc:
        raise RramcError(f"{option} {path} exists and cannot be read ({exc.strerror or exc}); choose another name") from None
    if found != kind:
        raise RramcError(f"{option} {path} exists and is {describe_kind(found)}, not {describe_kind(kind)}: choose another "
                         "name, or pass --force to replace it")
    if kind == "executable" and source is not None:
        compiled_from = executable_source(path)
        if compiled_from is not None and Path(compiled_from).name != source.name:
            raise RramcError(f"{option} {path} exists and was compiled from {compiled_from}, not {source}: choose another "
                             "name with -o, or pass --force to replace it")


def _in_loop(text: str | None) -> dict[str, bool]:
    chosen = [x.strip() for x in (text or "").split(",") if x.strip()]
    unknown = sorted(set(chosen) - {"levels", "converters", "variation", "wires"})
    if unknown:
        raise RramcError(f"--in-loop: unknown {', '.join(unknown)}; choose from levels, converters, variation, wires")
    return {name: True for name in chosen}


def _maybe_crop(data: Any, crop: int | None) -> Any:
    return data.center_crop(crop) if crop and data.sample_shape[-1] > crop else data


@app.command()
@reports_errors
def run(
    executable: Annotated[Path, typer.Argument(help="an .rramx file written by rramc compile")],
    dataset: DatasetOption = "digits",
    data_dir: DataDirOption = None,
    split: Annotated[str, typer.Option(help="train or test (of a builtin data set; a data file or folder is used whole)")] = "test",
    batch_size: Annotated[int, typer.Option(help="samples per batch")] = 256,
    limit: Annotated[Optional[int], typer.Option(help="evaluate the first N samples only")] = None,
    seed: Annotated[int, typer.Option(help="chip instance: programming variation, faults and read noise", min=0, max=SEED_MAX)] = 0,
    device: Annotated[str, typer.Option(help="torch device to simulate on (cpu, cuda)")] = "cpu",
    download: Annotated[bool, typer.Option(help="download the data set if it is missing (needs the network)", metavar=FLAG)] = False,
    trust_data: TrustDataOption = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="also write the report as JSON")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --json file that is not an rramc report", metavar=FLAG)] = False,
) -> None:
    """Run an executable on a data set and report float vs simulated-chip accuracy."""
    if json_path is not None:
        check_output(json_path, "--json", "report", force, inputs=(executable,))
    from rramc.datasets.user_data import load_data
    from rramc.runtime.executable import load_executable

    exe = load_executable(executable)
    data = _maybe_crop(load_data(dataset or "digits", split, data_dir, download=download, trust=trust_data,
                                 shape=exe.graph.inputs[0].shape), exe.metadata.get("model.crop"))
    report = exe.run(data, batch_size=batch_size, seed=seed, device=_torch_device(device), limit=limit, progress=sys.stderr.isatty())
    report.render(console)
    _warn(report.warnings)
    if json_path is not None:
        report.to_json(json_path)
        console.print(f"wrote {json_path}")


def _torch_device(name: str, *, here: bool = True) -> str:
    from rramc.torch_devices import check_torch_device

    return check_torch_device(name, here=here)


@app.command()
@reports_errors
def inspect(
    executable: Annotated[Path, typer.Argument(help="an .rramx file")],
    ir: Annotated[bool, typer.Option("--ir/--no-ir", help="also print the IR", metavar=FLAG)] = False,
    arrays: Annotated[bool, typer.Option("--arrays/--no-arrays", help="also list every array: its layer, word lines, outputs and use", metavar=FLAG)] = False,
) -> None:
    """Show an executable's target, a line per layer (crossbar layers and the digital ops between them), array use and cost."""
    from rramc.runtime.executable import load_executable

    exe = load_executable(executable)
    console.print(f"[bold]{executable}[/]  (compiled from {exe.metadata.get('source', '?')}, pipeline {exe.metadata.get('pipeline', '?')})")
    console.print(f"target {exe.target.describe()}", highlight=False)
    from rramc.hardware.currents import describe_limits

    console.print(f"  {describe_limits(exe.target)}", highlight=False)
    note = exe.device_evaluation()
    if note:
        console.print(f"columns: {note}", highlight=False)
    console.print(f"reference weights: {exe.reference_description()}", highlight=False)
    if ir:
        console.print(str(exe.graph), highlight=False)
    summary = exe.layer_summary()
    table = Table("layer", "op", "unit", "matrix", "arrays", "use", "weights", "inputs", "bits", title="Layers (bits: DAC/ADC resolution)",
                  title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
    for column in table.columns:  # in a narrow terminal a cell wraps, never loses its end; numbers stay whole
        column.overflow = "fold"
        column.no_wrap = column.header in ("matrix", "use", "bits")
    table.columns[0].min_width = max((len(line.name) for line in summary), default=0)
    for line in summary:
        if line.analog:
            assert line.matrix is not None and line.utilisation is not None
            table.add_row(line.name, line.kind.removeprefix("xbar."), "analog", f"{line.matrix[0]}×{line.matrix[1]}",
                          f"shares {line.shares}" if line.shares is not None else str(line.arrays), f"{100 * line.utilisation:.0f} %",
                          line.weight_encoding, line.input_encoding, "/".join("–" if b is None else str(b) for b in line.converters))
        else:
            table.add_row(line.name, line.kind, "digital", style="dim")
    console.print(table)
    usage = exe.array_usage()
    if arrays:
        table = Table("layer", "array", "word lines", "outputs", "cells used", "utilisation", title="Arrays (one per tile)")
        for u in usage:
            table.add_row(u["layer"], str(u["array"]), f"{u['rows'][0]}:{u['rows'][1]}", f"{u['outputs'][0]}:{u['outputs'][1]}",
                          str(u["cells"]), f"{100 * u['utilisation']:.1f} %")
        console.print(table)
    spec = exe.target.crossbar
    owned = [u for u in usage if u["shares"] is None]  # a layer reading another's arrays programs none
    cells = sum(u["cells"] for u in owned)
    capacity = len(owned) * spec.rows * spec.cols
    layers = sum(line.analog for line in summary)
    console.print(f"{layers} crossbar layers (analog) and {sum(line.ops for line in summary if not line.analog)} digital ops; "
                  f"{len(owned)} arrays of {spec.rows}×{spec.cols}, {cells:,} of {capacity:,} cells used "
                  f"({100 * cells / max(capacity, 1):.1f} %), {len(usage)} ADC tile readouts", highlight=False)
    from rramc.hardware.cost import estimate, format_quantity

    cost = estimate(exe.graph, exe.target)
    table = Table("layer", "arrays", "area", "vectors", "reads per vector", "latency",
                  title="Cost without data (inputs at full scale; energy needs data: rramc run)")
    for name, row in cost["layers"].items():
        table.add_row(name, str(row["arrays"]), f"{row['area_mm2']:.3g} mm²", str(row["vectors"]), str(row["reads_per_vector"]),
                      format_quantity(row["latency_s"], "s"))
    console.print(table)
    total = cost["per_inference"]
    console.print(f"area {total['area_mm2']:.3g} mm² ({total['arrays']} arrays with their converters and periphery), "
                  f"latency {format_quantity(total['latency_s'], 's')} per inference (layers one after another)", highlight=False)
    for note in cost["notes"]:
        console.print(f"  cost: {note}", style="dim", highlight=False)


@app.command()
@reports_errors
def passes() -> None:
    """List the available passes (built in and from plugins) with their options."""
    from rramc.pipeline import DEFAULT_PIPELINE, PASSES, PIPELINES

    origins = PASSES.origins()
    for name in PASSES.names():
        cls = PASSES.get(name)
        console.print(f"[bold]{name}[/]  {cls.summary()}", highlight=False)
        console.print(f"    from {origins[name]}", style="dim", highlight=False)
        for option, kind, default, help_text in cls.options():
            shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else default
            console.print(f"    {option}={shown}  {help_text} ({kind})", highlight=False)
    console.print(f"default pipeline: {DEFAULT_PIPELINE}")
    for name, build in PIPELINES:
        console.print(f"pipeline [bold]{name}[/]: {','.join(str(p) for p in build())}", highlight=False)


@app.command()
@reports_errors
def targets(
    name: Annotated[Optional[str], typer.Argument(help="a builtin name or YAML file to validate and describe")] = None,
    fields: Annotated[bool, typer.Option("--fields", help="list every field a target file may set", metavar=FLAG)] = False,
) -> None:
    """List the builtin targets, validate a target file, or show the fields of the format."""
    from rramc.hardware.target import builtin_targets, load_target, target_fields  # no torch: see rramc/hardware/target.py

    if fields:
        if name is not None:
            raise RramcError("--fields lists the format of every target; give it alone, or validate a target file without it")
        for section, entries in target_fields().items():
            console.print(f"[bold]{section}[/]")
            for field, text in entries:
                console.print(f"  {field}: {escape(text)}", highlight=False)  # units like [s] are not markup
        return
    from rramc.hardware.currents import describe_limits

    for spec in [name] if name else builtin_targets():
        loaded = load_target(spec)
        console.print(loaded.describe(), highlight=False)
        console.print(f"  {describe_limits(loaded)}", highlight=False)


@app.command()
@reports_errors
def sweep(
    model: Annotated[Path, typer.Argument(help="a .pt2 archive (or a state_dict with --model)")],
    target: Annotated[str, typer.Option("--target", "-t", help="base target (YAML file or builtin name)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="directory for sweep.csv, sweep.json and the plots")],
    dataset: DatasetOption = None,
    data_dir: DataDirOption = None,
    trust_data: TrustDataOption = False,
    factory: Annotated[Optional[str], typer.Option("--model", "-m", help="module:function building the network, for a state_dict")] = None,
    k: Annotated[Optional[str], typer.Option("--k", help="nonlinearities k to sweep, e.g. 2.5,7.5,20,70 (each point keeps the "
                                             "base's largest cell read current: g_min, g_max are scaled)")] = None,
    read_voltage: Annotated[Optional[str], typer.Option("--read-voltage", help="read voltages [V] to sweep (g_min, g_max scaled "
                                                        "as for --k)")] = None,
    adc_bits: Annotated[Optional[str], typer.Option("--adc-bits", help="ADC resolutions to sweep")] = None,
    axis: Annotated[Optional[list[str]], typer.Option("--axis", help="any field: section.field=v1,v2 (repeatable); crossbar.wire_resistance=0,0.5,1 sets word- and bit-line resistance [Ω per segment]")] = None,
    epochs: Annotated[int, typer.Option(help="reconstruction epochs at each point")] = 3,
    optimizer: Annotated[str, typer.Option(help="reconstruction optimizer: adam, or sgd (momentum 0.9)")] = "adam",
    lr: Annotated[Optional[float], typer.Option(help="reconstruction learning rate [default: 0.001 adam, 0.05 sgd]")] = None,
    train_samples: Annotated[Optional[int], typer.Option(help="train on at most this many samples")] = None,
    test_samples: Annotated[Optional[int], typer.Option(help="evaluate on at most this many test samples")] = None,
    reconstruct: Annotated[bool, typer.Option("--reconstruct/--no-reconstruct", help="include the reconstructed network", metavar=FLAG)] = True,
    seed: Annotated[int, typer.Option(help="seed of calibration sampling and training", min=0, max=SEED_MAX)] = 0,
    executor: Annotated[str, typer.Option("--executor", help="where the grid points run: local (here, one after another), "
                                          "processes (--jobs on this machine) or ray (pip install 'rramc[ray]')")] = "local",
    jobs: Annotated[Optional[int], typer.Option("--jobs", help="processes: worker processes [default: the cores]; ray: CPUs of "
                                                "a local Ray [default: the cores]")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="ray: the cluster to run on (host:port, or 'auto') "
                                                   "[default: start a local Ray]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the sweep in OUTPUT: skip the points its sweep.jsonl "
                                         "already holds", metavar=FLAG)] = False,
    device: Annotated[str, typer.Option(help="torch device to reconstruct and run the chips on (cpu, cuda); on Ray, each task gets one GPU")] = "cpu",
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads per point [default: the executor's: all "
                                                   "cores for local, cores/jobs for processes, 1 on Ray]; the same value gives "
                                                   "the same rows under every executor", min=1)] = None,
) -> None:
    """Accuracy of the conventional mapping vs the reconstructed network across chip settings.

    Points that change the cell's I-V (--k, --read-voltage) keep the base's largest cell read current (g_min, g_max scaled).
    Each point is one task of the executor; every finished point is appended to OUTPUT/sweep.jsonl at once, so a
    sweep that dies loses none of them (--resume continues it).
    """
    from rramc.datasets import require_labels
    from rramc.datasets.user_data import held_out, is_builtin, load_data
    from rramc.executors import check_executor_options, gpus_per_task, make_executor
    from rramc.frontend import load_model
    from rramc.frontend.model_files import is_export_archive
    from rramc.hardware import load_target
    from rramc.sweep import grid_targets, parse_axis, run_sweep

    texts = [f"{name}={values}" for name, values in (("k", k), ("read_voltage", read_voltage), ("adc_bits", adc_bits)) if values]
    axes = dict(parse_axis(text) for text in [*texts, *(axis or [])])
    if not axes:
        raise RramcError("sweep: give at least one axis (--k, --read-voltage, --adc-bits or --axis section.field=v1,v2)")
    base = load_target(target)
    grid_targets(base, axes)  # every point valid before any work
    if output.exists() and not output.is_dir():
        raise RramcError(f"--output {output} exists and is not a directory")
    check_executor_options(executor, jobs, address)  # before the model and the data load
    _torch_device(device, here=address is None)  # a cluster's GPUs are its workers' (the executor checks it has them)
    loaded_meta = load_model(model, factory=factory, input_shape=None if is_export_archive(model) else
                             load_data(dataset or "digits", "train", data_dir, trust=trust_data).sample_shape)
    name = dataset or loaded_meta.metadata.get("dataset")
    if name is None:
        raise RramcError(f"{model}: give the data set to train and evaluate on (--dataset)")
    if is_builtin(name):
        train, test = load_data(name, "train", data_dir), load_data(name, "test", data_dir)
    else:  # the user's data: one set, of which a share is held out
        data = load_data(name, trust=trust_data, shape=loaded_meta.graph.inputs[0].shape)
        train, test = held_out(require_labels(data, "a sweep (training and evaluating)"), seed)
        console.print(f"{name} has no train and test splits of its own: training on {len(train)} of its samples, evaluating "
                      f"on the other {len(test)} (drawn by --seed)", highlight=False)
    train = _maybe_crop(train, loaded_meta.metadata.get("crop"))
    test = _maybe_crop(test, loaded_meta.metadata.get("crop"))
    if train_samples:
        train = train.shuffled(seed).take(train_samples)
    if test_samples:
        test = test.take(test_samples)
    from rramc.datasets import fit_inputs

    fit_inputs(test.images[:1], loaded_meta.graph.inputs[0].shape, name)
    runner = make_executor(executor, jobs=jobs, address=address, gpus_per_task=gpus_per_task(executor, device))
    with runner, _SweepProgress() as progress:
        output.mkdir(parents=True, exist_ok=True)  # once the executor stands: a refused one leaves nothing behind
        result = run_sweep(loaded_meta.graph, base, train, test, axes, epochs=epochs, optimizer=optimizer, lr=lr, seed=seed,
                           reconstruct=reconstruct, executor=runner, log=output / "sweep.jsonl", resume=resume, device=device,
                           threads=threads,
                           on_event=progress.event, on_row=progress.row)
    if result.meta.get("resumed"):
        console.print(f"resumed: {result.meta['resumed']} finished point(s) taken from {output / 'sweep.jsonl'}")
    for path in result.write(output):
        console.print(f"wrote {path}")
    if result.failures:
        lines = "; ".join(f"{result.labels.get(key, key)}: {error}" for key, error in result.failures.items())
        raise RramcError(f"{len(result.failures)} of the sweep's tasks failed, the others are written: {lines}. "
                         "Rerun with --resume to retry only those.")


class _SweepProgress:
    """A progress bar of the sweep's tasks (done, running, failed) on a terminal, and a line per finished task."""

    def __init__(self) -> None:
        self.started = self.finished = self.failed = 0
        self._bar: Any = None

    def __enter__(self) -> _SweepProgress:
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("sweep"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=errors, transient=True)
            self._bar.start()
            self._task = self._bar.add_task("", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def event(self, kind: str, key: str) -> None:
        if kind == "started":
            self.started += 1
        elif kind == "finished":
            self.finished += 1
        else:
            self.failed += 1
        if self._bar is not None:
            running = self.started - self.finished - self.failed
            self._bar.update(self._task, total=self.started, completed=self.finished + self.failed,
                             description=f"{self.finished} done, {running} running, {self.failed} failed")

    def row(self, key: str, row: dict[str, Any] | None, error: str | None) -> None:
        if row is None:
            errors.print(f"[bold red]failed:[/] {escape(error or '')}", highlight=False, soft_wrap=True)
            return
        from rramc.hardware.cost import format_quantity
        from rramc.sweep import COST_COLUMNS

        def shown(key: str, value: Any) -> str:
            if key.endswith(COST_COLUMNS):
                return format_quantity(value, key.rsplit("_", 1)[1])
            return f"{100 * value:.2f} %"

        measured = {k: v for k, v in row.items() if isinstance(v, float) and "." not in k}
        accuracies = ", ".join(f"{k} {shown(k, v)}" for k, v in measured.items() if not k.endswith(COST_COLUMNS))
        costs = ", ".join(f"{k.rsplit('_', 2)[0]} {shown(k, v)}" for k, v in measured.items() if k.endswith(COST_COLUMNS))
        point = ", ".join(f"{k}={v}" for k, v in row.items() if "." in k) or "float trained the same extra epochs"
        console.print(f"{point}: {accuracies}" + (f"; per inference: {costs}" if costs else ""), highlight=False)


@app.command()
@reports_errors
def demo(
    target: Annotated[str, typer.Option("--target", "-t", help="target to compile for")] = "rram_a",
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the naive executable; the reconstructed one "
                                         "goes next to it as <name>_reconstructed.rramx")] = Path("digits_mlp.rramx"),
    epochs: Annotated[int, typer.Option(help="reconstruction epochs", min=1)] = 3,
    force: Annotated[bool, typer.Option("--force", help="replace existing outputs that are not the demo's executables", metavar=FLAG)] = False,
) -> None:
    """The method in seconds: the shipped digits MLP in float, mapped naively onto a chip, and reconstructed for it.

    Compiles rramc/samples/digits_mlp.pt2 twice for the target (the conventional mapping, and
    retrained through the device's I-V as Kim et al. propose) and runs both on scikit-learn's
    digits test split.
    """
    from rramc.samples import sample_path

    model = sample_path("digits_mlp.pt2")
    reconstructed_output = output.with_name(f"{output.stem}_reconstructed{output.suffix or '.rramx'}")
    for path in (output, reconstructed_output):
        check_output(path, "--output", "executable", force, inputs=(target,), source=model)

    from rramc.datasets import load_dataset
    from rramc.driver import compile_file
    from rramc.hardware import load_target

    spec = load_target(target)
    console.print(f"[bold]rramc demo[/]: the shipped digits MLP on {spec.name}, naive and reconstructed "
                  f"({epochs} epochs through the device's I-V)", highlight=False)
    console.print(f"  {spec.describe()}", style="dim", highlight=False)
    test = load_dataset("digits", "test")
    reports = {}
    for method, path, options in (("naive", output, None), ("reconstructed", reconstructed_output, {"epochs": epochs})):
        exe = compile_file(model, spec, calibration="digits", reconstruct=options, progress=sys.stderr.isatty())
        exe.save(path)
        reports[method] = exe.run(test)
        console.print(f"wrote {path} ({method}, {exe.compile_seconds or 0:.1f} s)", highlight=False)
    naive, rebuilt = reports["naive"], reports["reconstructed"]
    table = Table("network", "run on", "test accuracy", title=f"digits test split ({naive.samples} samples)", title_justify="left")
    table.add_row("float (PyTorch)", "PyTorch", f"{100 * naive.float_accuracy:.2f} %")
    table.add_row("naive mapping", f"simulated {spec.name} chip", f"{100 * naive.chip_accuracy:.2f} %")
    table.add_row("reconstructed for the device", f"simulated {spec.name} chip", f"{100 * rebuilt.chip_accuracy:.2f} %")
    console.print(table)
    for method, report in reports.items():
        _warn([f"{method}: {text}" for text in report.warnings])
    console.print(f"rramc run {output} (or {reconstructed_output}) shows where the error comes from, layer by layer.",
                  highlight=False)


@app.command("fit-device")
@reports_errors
def fit_device(
    sweeps: Annotated[Path, typer.Argument(help="CSV of measured I-V sweeps: 'state,voltage,current' [V, A], one row per point")],
    output: Annotated[Path, typer.Option("--output", "-o", help="target YAML to write (a table device also writes <name>_iv.csv)")],
    model: Annotated[str, typer.Option("--model", "-m", help="sinh, sinh_state or table")] = "sinh",
    read_voltage: Annotated[float, typer.Option("--read-voltage", help="the target's read voltage [V]; the k's are given at it")] = 1.0,
    levels: Annotated[int, typer.Option("--levels", help="programmable levels per cell")] = 32,
    name: Annotated[Optional[str], typer.Option("--name", help="target name [default: OUTPUT's file name]")] = None,
    rows: Annotated[int, typer.Option(help="word lines per array")] = 128,
    cols: Annotated[int, typer.Option(help="bit lines per array")] = 128,
    dac_bits: Annotated[int, typer.Option(help="input DAC resolution")] = 8,
    adc_bits: Annotated[int, typer.Option(help="ADC resolution")] = 8,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --output that is not a YAML file", metavar=FLAG)] = False,
) -> None:
    """Fit a device model to measured I-V sweeps and write a target for it."""
    check_output(output, "--output", "yaml", force, inputs=(sweeps,))
    from rramc.device_fit import ERROR_COLUMNS, error_rows, fit_device_file

    report = fit_device_file(sweeps, output, model, read_voltage=read_voltage, levels=levels, name=name,
                             rows=rows, cols=cols, dac_bits=dac_bits, adc_bits=adc_bits)
    console.print(report.fit.summary(), highlight=False)
    table = Table(*ERROR_COLUMNS, title="fit error per state",
                  caption=f"RMS, max: % of the sweep's largest current; at Vread ({read_voltage:g} V): relative, %")
    for row in error_rows(report.errors):
        table.add_row(*row)
    console.print(table)
    _warn(report.warnings)
    for path in report.written:
        console.print(f"wrote {path}", highlight=False)


@app.command("plot-device")
@reports_errors
def plot_device(
    target: Annotated[str, typer.Argument(help="target YAML file or builtin name (ideal, rram_a, rram_b)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write")] = Path("iv.png"),
    states: Annotated[int, typer.Option("--states", help="conductances to draw, evenly spaced from g_min to g_max")] = 5,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --output that is not a PNG image", metavar=FLAG)] = False,
) -> None:
    """Draw a target device's I-V curves, with the read voltage and the window's currents at it."""
    check_output(output, "--output", "png", force, inputs=(target,))
    from rramc.device_plot import plot_device as draw

    console.print(f"wrote {draw(target, output, states)}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
