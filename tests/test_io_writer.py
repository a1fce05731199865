"""Tests of atomic result files and the background AsyncWriter."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from homodyne_mpi.errors import HomodyneError
from homodyne_mpi.io import (
    AsyncWriter,
    WriteError,
    atomic_write_bytes,
    atomic_write_call,
    atomic_write_hdf5,
    atomic_write_json,
    atomic_write_npz,
)

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0


def files_in(folder: Path) -> list[str]:
    """Every file name under ``folder``, relative, sorted (temporary files included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- synchronous atomic writes ----------------------------------------------------------


def test_atomic_json_numpy_types_nan_and_nested_folders(tmp_path: Path) -> None:
    target = tmp_path / "ds1" / "nlsq" / "result.json"
    obj = {
        "method": "nlsq",
        "chi2": np.float64(1.25),
        "iterations": np.int32(7),
        "converged": np.bool_(True),
        "values": np.array([1.0, np.nan, np.inf]),
        "pair": (np.float32(0.5), 2),
        "bad": float("nan"),
    }
    assert atomic_write_json(target, obj) == target
    text = target.read_text()
    back = json.loads(text)
    assert list(back) == list(obj)  # insertion order kept, not sorted
    assert back["chi2"] == 1.25 and back["iterations"] == 7 and back["converged"] is True
    assert back["values"][0] == 1.0 and math.isnan(back["values"][1]) and back["values"][2] == math.inf
    assert back["pair"] == [0.5, 2] and math.isnan(back["bad"])
    assert '\n  "method": "nlsq"' in text  # indent 2
    assert files_in(tmp_path) == ["ds1/nlsq/result.json"]


def test_atomic_json_unencodable_object_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="object"):
        atomic_write_json(tmp_path / "r.json", {"x": object()})
    assert files_in(tmp_path) == []


def test_atomic_npz_keeps_exact_name_and_round_trips(tmp_path: Path) -> None:
    target = tmp_path / "arrays.data"
    atomic_write_npz(target, c2=np.arange(6.0).reshape(2, 3), path=np.array([1, 2]))
    assert files_in(tmp_path) == ["arrays.data"]
    with np.load(target) as archive:
        np.testing.assert_array_equal(archive["c2"], np.arange(6.0).reshape(2, 3))
        np.testing.assert_array_equal(archive["path"], [1, 2])


def test_atomic_hdf5_groups_and_attrs(tmp_path: Path) -> None:
    target = tmp_path / "fit.h5"
    c2 = np.random.default_rng(0).normal(size=(3, 4, 4))
    atomic_write_hdf5(target, {"c2_fit": c2, "meta/grid/t": np.linspace(0, 1, 4)}, {"n_ranks": 4, "mode": "static"})
    with h5py.File(target, "r") as handle:
        np.testing.assert_array_equal(handle["c2_fit"][()], c2)
        assert isinstance(handle["meta/grid"], h5py.Group)
        np.testing.assert_array_equal(handle["meta/grid/t"][()], np.linspace(0, 1, 4))
        assert handle.attrs["n_ranks"] == 4 and handle.attrs["mode"] == "static"
    assert files_in(tmp_path) == ["fit.h5"]


def test_atomic_write_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert files_in(tmp_path) == ["blob.bin"]


def test_failed_call_keeps_old_target_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_bytes(b"previous plot")
    seen: list[Path] = []

    def half_then_fail(temp: Path) -> None:
        seen.append(temp)
        temp.write_bytes(b"half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_call(target, half_then_fail)
    assert seen[0].parent == tmp_path and seen[0].suffix == ".png" and seen[0] != target
    assert target.read_bytes() == b"previous plot"
    assert files_in(tmp_path) == ["plot.png"]


# -- AsyncWriter ------------------------------------------------------------------------


def test_writer_round_trips_every_kind(tmp_path: Path) -> None:
    c2 = np.arange(16.0).reshape(4, 4)
    with AsyncWriter(max_workers=3) as writer:
        writer.submit_json(tmp_path / "a" / "result.json", {"chi2": np.float32(2.5), "p": np.arange(3)})
        writer.submit_npz(tmp_path / "a" / "arrays.npz", c2=c2, path=np.ones(2))
        writer.submit_hdf5(tmp_path / "b" / "fit.h5", {"nlsq/c2_fit": c2}, {"converged": True})
        future = writer.submit_bytes(tmp_path / "c.bin", bytearray(b"\x00\x01"))
        writer.submit_call(tmp_path / "d.txt", lambda temp, text: Path(temp).write_text(text), "hello")
    assert future.result() == tmp_path / "c.bin"
    assert writer.pending == 0 and writer.submitted == 5 and writer.completed == 5
    assert writer.failures == []
    assert json.loads((tmp_path / "a" / "result.json").read_text()) == {"chi2": 2.5, "p": [0, 1, 2]}
    with np.load(tmp_path / "a" / "arrays.npz") as archive:
        np.testing.assert_array_equal(archive["c2"], c2)
        np.testing.assert_array_equal(archive["path"], np.ones(2))
    with h5py.File(tmp_path / "b" / "fit.h5", "r") as handle:
        np.testing.assert_array_equal(handle["nlsq/c2_fit"][()], c2)
        assert bool(handle.attrs["converged"])
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "d.txt").read_text() == "hello"
    assert files_in(tmp_path) == ["a/arrays.npz", "a/result.json", "b/fit.h5", "c.bin", "d.txt"]


def test_submitted_data_are_snapshots(tmp_path: Path) -> None:
    gate = threading.Event()
    c2 = np.zeros(5)
    summary = {"chi2": 1.0}
    payload = bytearray(b"abc")
    with AsyncWriter(max_workers=1) as writer:
        writer.submit_call(tmp_path / "block.txt", lambda temp: (gate.wait(WAIT_S), Path(temp).write_text("x")))
        writer.submit_npz(tmp_path / "c2.npz", c2=c2)
        writer.submit_hdf5(tmp_path / "c2.h5", {"c2": c2})
        writer.submit_json(tmp_path / "r.json", summary)
        writer.submit_bytes(tmp_path / "p.bin", payload)
        # The writer is blocked; the caller goes on and reuses its buffers.
        c2[:] = 99.0
        summary["chi2"] = 5.0
        payload[:] = b"zzz"
        gate.set()
    with np.load(tmp_path / "c2.npz") as archive:
        np.testing.assert_array_equal(archive["c2"], np.zeros(5))
    with h5py.File(tmp_path / "c2.h5", "r") as handle:
        np.testing.assert_array_equal(handle["c2"][()], np.zeros(5))
    assert json.loads((tmp_path / "r.json").read_text()) == {"chi2": 1.0}
    assert (tmp_path / "p.bin").read_bytes() == b"abc"


def test_target_never_appears_partially(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    halfway = threading.Event()
    finish = threading.Event()

    def slow_write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            handle.write(b"first half ")
            handle.flush()
            halfway.set()
            finish.wait(WAIT_S)
            handle.write(b"second half")

    with AsyncWriter() as writer:
        writer.submit_call(target, slow_write)
        assert halfway.wait(WAIT_S)
        assert not target.exists()
        temps = [name for name in os.listdir(tmp_path) if name != "big.bin"]
        assert len(temps) == 1 and temps[0].startswith(".big.tmp-")
        finish.set()
    assert target.read_bytes() == b"first half second half"
    assert files_in(tmp_path) == ["big.bin"]


def test_failing_call_leaves_neither_target_nor_temp(tmp_path: Path) -> None:
    def half_then_fail(temp: Path) -> None:
        Path(temp).write_bytes(b"half")
        raise ValueError("plotting broke")

    writer = AsyncWriter()
    writer.submit_call(tmp_path / "fig.png", half_then_fail)
    failures = writer.wait_all()
    writer.shutdown()
    assert len(failures) == 1 and isinstance(failures[0].error, ValueError)
    assert failures[0].path == tmp_path / "fig.png" and failures[0].kind == "call"
    assert "plotting broke" in failures[0].traceback
    assert files_in(tmp_path) == []


def test_failed_write_is_reported_and_raised(tmp_path: Path) -> None:
    (tmp_path / "not_a_dir").write_text("a file where a folder should be")
    bad_json = tmp_path / "not_a_dir" / "result.json"
    bad_h5 = tmp_path / "not_a_dir" / "sub" / "fit.h5"
    good = tmp_path / "ok.json"
    writer = AsyncWriter()
    writer.submit_json(bad_json, {"x": 1})
    writer.submit_json(good, {"x": 2})
    writer.submit_hdf5(bad_h5, {"c2": np.ones(2)})
    failures = writer.wait_all()
    assert sorted(failure.path for failure in failures) == sorted([bad_json, bad_h5])
    assert all(isinstance(failure.error, OSError) for failure in failures)
    assert writer.completed == 1 and json.loads(good.read_text()) == {"x": 2}
    with pytest.raises(WriteError) as caught:
        writer.raise_if_failed()
    error = caught.value
    assert isinstance(error, HomodyneError) and error.exit_code == 1
    assert str(bad_json) in str(error) and str(bad_h5) in str(error)
    assert "2 result file writes failed" in str(error)
    assert len(error.failures) == 2
    writer.shutdown()


def test_exit_raises_write_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    with pytest.raises(WriteError, match="blocker"):
        with AsyncWriter() as writer:
            writer.submit_bytes(tmp_path / "blocker" / "x.bin", b"1")
    assert writer.pending == 0


def test_exit_does_not_mask_an_exception_already_raising(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "blocker").write_text("")
    with pytest.raises(KeyError, match="original"):
        with AsyncWriter() as writer:
            writer.submit_bytes(tmp_path / "blocker" / "x.bin", b"1")
            raise KeyError("original")
    assert len(writer.failures) == 1
    assert any("blocker" in record.getMessage() for record in caplog.records)


def test_raise_if_failed_is_quiet_without_failures(tmp_path: Path) -> None:
    with AsyncWriter() as writer:
        writer.submit_bytes(tmp_path / "x.bin", b"1")
        assert writer.wait_all() == []
        writer.raise_if_failed()


def test_wait_all_waits_for_slow_writes(tmp_path: Path) -> None:
    target = tmp_path / "slow.txt"

    def slow(temp: Path) -> None:
        time.sleep(0.3)
        Path(temp).write_text("done")

    writer = AsyncWriter()
    writer.submit_call(target, slow)
    assert writer.pending == 1
    assert writer.wait_all() == []
    assert target.read_text() == "done"
    assert writer.pending == 0 and writer.completed == 1
    writer.shutdown()


def test_wait_all_timeout(tmp_path: Path) -> None:
    gate = threading.Event()
    writer = AsyncWriter()
    writer.submit_call(tmp_path / "x.txt", lambda temp: (gate.wait(WAIT_S), Path(temp).write_text("x")))
    with pytest.raises(TimeoutError, match="1 result file writes still running"):
        writer.wait_all(timeout=0.1)
    gate.set()
    assert writer.wait_all() == []
    writer.shutdown()


def test_writes_to_one_path_land_in_submission_order(tmp_path: Path) -> None:
    target = tmp_path / "result.json"

    def slow_old(temp: Path) -> None:
        time.sleep(0.3)
        Path(temp).write_text('{"version": 1}')

    with AsyncWriter(max_workers=4) as writer:
        writer.submit_call(target, slow_old)
        writer.submit_json(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 2}
    assert files_in(tmp_path) == ["result.json"]


def test_submit_after_shutdown_is_refused(tmp_path: Path) -> None:
    writer = AsyncWriter()
    writer.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        writer.submit_bytes(tmp_path / "x.bin", b"1")


def test_unencodable_json_raises_in_the_caller(tmp_path: Path) -> None:
    with AsyncWriter() as writer:
        with pytest.raises(TypeError):
            writer.submit_json(tmp_path / "r.json", {"x": {1, 2}})
    assert writer.submitted == 0 and files_in(tmp_path) == []


@pytest.mark.parametrize("workers", [0, -2, 1.0])
def test_bad_worker_count_is_refused(workers: object) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        AsyncWriter(max_workers=workers)  # type: ignore[arg-type]


def test_png_through_submit_call_keeps_its_extension(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    target = tmp_path / "plots" / "c2_phi0.png"
    with AsyncWriter() as writer:
        writer.submit_call(target, figure.savefig)  # format inferred from the temp name
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files_in(tmp_path) == ["plots/c2_phi0.png"]
