"""Sweeps beyond one process: the same rows under every executor, resumable after a kill, failures contained."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.errors import RramcError
from rramc.executors import LocalExecutor, ProcessExecutor, make_executor
from rramc.frontend import load_model, save_exported
from rramc.samples import models
from rramc.sweep import run_sweep
from rramc.training import TrainConfig, train_classifier

AXES = {"device.nonlinearity_k": [2.5, 20.0], "crossbar.adc_bits": [6, 8]}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, digits_train) -> Path:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = train_classifier(models.mlp(64, 32, 10, clipped=True), digits_train, TrainConfig(epochs=8, batch_size=64))
    path = tmp_path_factory.mktemp("executors") / "mlp.pt2"
    save_exported(model, digits_train.images[:1], path, dataset="digits")
    return path


def _sweep(model_file: Path, executor, digits_train, digits_test, **options):  # type: ignore[no-untyped-def]
    graph = load_model(model_file).graph
    return run_sweep(graph, "rram_a", digits_train.take(256), digits_test.take(90), AXES, epochs=1, executor=executor,
                     threads=1, **options)


def test_every_executor_gives_the_same_rows(model_file: Path, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    """local, a pool of 2 processes and a local Ray with 2 CPUs: the same grid, the same rows, in grid order
    (with the same torch threads per task: one)."""
    local = _sweep(model_file, LocalExecutor(), digits_train, digits_test)
    assert len(local.rows) == 4 and not local.failures
    assert [(r["device.nonlinearity_k"], r["crossbar.adc_bits"]) for r in local.rows] == [(2.5, 6), (2.5, 8), (20.0, 6), (20.0, 8)]
    with ProcessExecutor(2) as pool:
        assert _sweep(model_file, pool, digits_train, digits_test).rows == local.rows
    if not os.environ.get("RRAMC_REQUIRE_RAY"):  # CI sets it: there a missing Ray is a failure, not a skip
        pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'rramc[ray]'); CI installs it")
    with make_executor("ray", jobs=2) as ray_executor:
        assert ray_executor.workers == 2
        assert _sweep(model_file, ray_executor, digits_train, digits_test).rows == local.rows
        # a cluster whose workers lack the project is refused before any task (probed with a distribution none has)
        with pytest.raises(RramcError, match="the cluster's workers cannot find rramc-not-installed.*install it on every node"):
            ray_executor.check_workers("rramc-not-installed")
    if not torch.cuda.is_available():  # GPU tasks on a cluster without GPUs would wait for ever: refused, and Ray stopped
        with pytest.raises(RramcError, match="the cluster has 0 GPUs; each task needs 1"):
            make_executor("ray", jobs=1, gpus_per_task=1)
        import ray

        assert not ray.is_initialized()


def test_a_failing_point_leaves_the_others(digits_train, digits_test, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A point whose wires do not converge fails with its error; the other point's row is written, and --resume retries only it."""
    with resources.as_file(resources.files("rramc.samples") / "digits_mlp.pt2") as path:
        graph = load_model(path).graph
    base = rramc.load_target("rram_a").with_changes(
        wires={"model": "resistive", "method": "exact", "max_iterations": 1, "word_line_resistance": 0.0, "bit_line_resistance": 0.0})
    log = tmp_path / "sweep.jsonl"
    for executor in (LocalExecutor(), ProcessExecutor(2)):
        if log.exists():
            log.unlink()
        with executor:
            result = run_sweep(graph, base, digits_train.take(128), digits_test.take(40), {"crossbar.wire_resistance": [0.0, 5.0]},
                               reconstruct=False, least_squares=False, executor=executor, log=log)
        assert [r["crossbar.wire_resistance"] for r in result.rows] == [0.0]
        (error,) = result.failures.values()
        assert "the wire solver did not converge" in error
        assert len(log.read_text().splitlines()) == 2  # the description and the one finished point
    retried = run_sweep(graph, base, digits_train.take(128), digits_test.take(40), {"crossbar.wire_resistance": [0.0, 5.0]},
                        reconstruct=False, least_squares=False, log=log, resume=True)
    assert retried.meta["resumed"] == 1 and len(retried.failures) == 1  # only the failed point ran again


def test_a_killed_sweep_resumes_to_the_same_table(model_file: Path, tmp_path: Path) -> None:
    """SIGKILL a sweep after its first finished point; --resume finishes it; the table equals an uninterrupted run's."""
    args = ["sweep", str(model_file), "-t", "rram_a", "--k", "2.5,5,7.5,10,20,40,70", "--no-reconstruct", "--test-samples", "360"]
    killed = tmp_path / "killed"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    process = subprocess.Popen([sys.executable, "-m", "rramc.cli", *args, "-o", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = killed / "sweep.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and len(log.read_bytes().splitlines()) >= 2:  # the description and one finished point
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    finished = len(log.read_bytes().splitlines()) - 1
    assert process.returncode == -signal.SIGKILL and 1 <= finished < 7, (process.returncode, finished)
    assert not (killed / "sweep.csv").exists()

    runner = CliRunner()
    refused = runner.invoke(app, [*args, "-o", str(killed)])
    assert refused.exit_code == 1 and "--resume" in refused.output
    resumed = runner.invoke(app, [*args, "-o", str(killed), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed: {finished} finished point(s)" in resumed.output
    whole = runner.invoke(app, [*args, "-o", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert (killed / "sweep.csv").read_text() == (tmp_path / "whole" / "sweep.csv").read_text()
    assert len(list(csv.DictReader((killed / "sweep.csv").open()))) == 7
    # a log of another grid is not resumed into
    other = runner.invoke(app, [*args[:5], "2.5,5", *args[6:], "-o", str(killed), "--resume"])
    assert other.exit_code == 1 and "is a sweep of another axes" in other.output


@pytest.mark.parametrize("args, words", [
    (["--executor", "processes", "--jobs", "0"], ["--jobs 0", "at least 1"]),
    (["--executor", "cluster"], ["--executor 'cluster'", "local, processes, ray"]),
    (["--jobs", "2"], ["--jobs is for --executor processes or ray"]),
    (["--address", "10.0.0.1:6379"], ["--address is for --executor ray"]),
    (["--device", "tpu9"], ["tpu9"]),
])
def test_bad_executor_options(args: list[str], words: list[str], model_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", str(model_file), "-t", "rram_a", "--k", "2.5", "-o", str(tmp_path / "o"), *args],
                                env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 1 and all(w in result.output for w in words), result.output
    assert not (tmp_path / "o").exists()


def test_ray_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(RramcError, match=r"pip install 'rramc\[ray\]'"):
        make_executor("ray")


def test_a_sweep_log_with_a_cut_last_line_resumes(model_file: Path, digits_train, digits_test, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A kill in the middle of appending leaves half a line: it is dropped, and that point runs again."""
    log = tmp_path / "sweep.jsonl"
    first = _sweep(model_file, None, digits_train, digits_test, reconstruct=False, log=log)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    again = _sweep(model_file, None, digits_train, digits_test, reconstruct=False, log=log, resume=True)
    assert again.meta["resumed"] == 3 and again.rows == first.rows
    assert all(json.loads(line) for line in log.read_bytes().splitlines())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the --device cuda path runs where one is")
def test_a_sweep_runs_its_chips_on_cuda(model_file: Path, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    """The same grid with the chips simulated on the GPU: the same accuracies, up to float32 reduction order (one sample)."""
    cpu = _sweep(model_file, None, digits_train, digits_test, reconstruct=False)
    gpu = _sweep(model_file, None, digits_train, digits_test, reconstruct=False, device="cuda")
    for a, b in zip(cpu.rows, gpu.rows):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 1 / 90 + 1e-9 for k in a if isinstance(a[k], float)), (a, b)


def test_ray_missing_from_the_command_line_writes_nothing(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(app, ["sweep", str(model_file), "-t", "rram_a", "--k", "2.5", "-o", str(tmp_path / "o"),
                                      "--executor", "ray"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 1 and "pip install 'rramc[ray]'" in result.output
    assert not (tmp_path / "o").exists()


def die_on_two(shared: object, item: int) -> int:
    if item == 2:
        os._exit(3)  # a worker killed mid-task (out of memory, a signal)
    return item


def test_a_dying_worker_fails_its_tasks_not_the_run() -> None:
    with ProcessExecutor(2) as pool:
        outcomes = {o.key: o for o in pool.run(die_on_two, None, [("one", 1), ("two", 2), ("three", 3)])}
    assert set(outcomes) == {"one", "two", "three"}  # every task is accounted for
    assert not outcomes["two"].ok and "worker process died" in (outcomes["two"].error or "")
    assert all(o.ok or "worker process died" in (o.error or "") for o in outcomes.values())


def test_an_unreachable_ray_address_is_refused_at_once(model_file: Path, tmp_path: Path) -> None:
    """Nothing listens on the port: a clear message in seconds (Ray alone retries for minutes), and nothing written."""
    import socket

    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if not os.environ.get("RRAMC_REQUIRE_RAY"):
        pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'rramc[ray]'); CI installs it")
    result = CliRunner().invoke(app, ["sweep", str(model_file), "-t", "rram_a", "--k", "2.5", "-o", str(tmp_path / "o"),
                                      "--executor", "ray", "--address", f"127.0.0.1:{port}"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 1 and f"--address 127.0.0.1:{port}: no Ray cluster answers there" in result.output, result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, words", [
    (b"hello\n{}\n", "line 1: not a sweep log line"),
    (b'{"sweep": 3}\n', "not a sweep log"),
    (b'{"key": "x", "row": {}}\n', "not a sweep log"),
])
def test_resuming_a_file_that_is_not_a_sweep_log(content: bytes, words: str, model_file: Path, digits_train, digits_test,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    log = tmp_path / "sweep.jsonl"
    log.write_bytes(content)
    with pytest.raises(RramcError, match=words):
        _sweep(model_file, None, digits_train, digits_test, reconstruct=False, log=log, resume=True)
    assert log.read_bytes() == content  # refused: left as it was
