"""Readers of the two correlator layouts, selection steps and every bad-input error."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from homodyne_mpi.data import (
    XPCSData,
    angles_in_ranges,
    estimate_noise_sigma,
    frame_window,
    full_symmetric,
    is_triangular_half,
    load_config_dataset,
    load_xpcs,
    select_nearest_q,
)
from homodyne_mpi.errors import ConfigError, InputError

N = 20


def constant_half(value: float, n: int = N, dtype=np.float64) -> np.ndarray:
    """Upper half (diagonal included) of a constant matrix, as the correlator stores it."""
    return np.triu(np.full((n, n), value, dtype=dtype))


def write_aps_u(
    path,
    *,
    q_list=(0.01,),
    phi_list=(0.0, 90.0),
    bins=None,
    matrices=None,
    frame_time=0.1,
    stride=None,
    avg=None,
    skip=(),
):
    """An APS-U file; matrix k holds the constant k+1 unless ``matrices`` is given."""
    n_phi = len(phi_list)
    if bins is None:
        bins = np.arange(1, len(q_list) * n_phi + 1)
    if matrices is None:
        matrices = [constant_half(k + 1.0) for k in range(len(bins))]
    with h5py.File(path, "w") as h5:
        if "dim0" not in skip:
            h5["xpcs/qmap/dynamic_v_list_dim0"] = np.asarray(q_list, dtype=float)
        if "dim1" not in skip:
            h5["xpcs/qmap/dynamic_v_list_dim1"] = np.asarray(phi_list, dtype=float)
        h5["xpcs/twotime/processed_bins"] = np.asarray(bins)
        group = h5.create_group("xpcs/twotime/correlation_map")
        for k, matrix in enumerate(matrices):
            if matrix is not None:
                group[f"c2_{k + 1:05d}"] = matrix
        if frame_time is not None:
            h5["entry/instrument/detector_1/frame_time"] = frame_time
        if stride is not None:
            h5["xpcs/twotime/config/stride_frame"] = stride
        if avg is not None:
            h5["xpcs/twotime/config/avg_frame"] = avg
    return path


def write_legacy(path, *, q, phi, matrices, names=None, frame_time=0.1):
    with h5py.File(path, "w") as h5:
        h5["xpcs/dqlist"] = np.asarray(q, dtype=float)[None, :]
        h5["xpcs/dphilist"] = np.asarray(phi, dtype=float)[None, :]
        group = h5.create_group("exchange/C2T_all")
        names = names or [f"c2_{k + 1:05d}" for k in range(len(matrices))]
        for name, matrix in zip(names, matrices):
            group[name] = matrix
        if frame_time is not None:
            h5["entry/instrument/detector_1/frame_time"] = frame_time
    return path


def assert_input_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# ---------------------------------------------------------------- APS-U mapping


def test_aps_u_bin_mapping_is_q_major_and_positional(tmp_path):
    # 2 q x 3 phi grid; only bins 2, 4, 6 processed -> (q0, 90), (q1, 0), (q1, 180).
    path = write_aps_u(tmp_path / "a.h5", q_list=(0.01, 0.02), phi_list=(0.0, 90.0, 180.0), bins=[2, 4, 6])
    data = load_xpcs(path, wavevector_q=0.02)
    assert data.layout == "aps-u"
    assert data.q == 0.02
    np.testing.assert_array_equal(data.phi, [0.0, 180.0])
    # c2_00002 holds 2, c2_00003 holds 3: the matrix of the k-th processed bin.
    np.testing.assert_array_equal(data.c2[:, 0, 5], [2.0, 3.0])
    single = load_xpcs(path, wavevector_q=0.011)
    np.testing.assert_array_equal(single.phi, [90.0])
    assert single.c2[0, 3, 7] == 1.0


def test_phi_sorted_ascending_with_matrices_following(tmp_path):
    path = write_aps_u(tmp_path / "a.h5", phi_list=(60.0, -30.0, 10.0))
    data = load_xpcs(path, wavevector_q=0.01)
    np.testing.assert_array_equal(data.phi, [-30.0, 10.0, 60.0])
    np.testing.assert_array_equal(data.c2[:, 1, 2], [2.0, 3.0, 1.0])


def test_reader_opens_only_selected_matrices(tmp_path, monkeypatch):
    path = write_aps_u(tmp_path / "a.h5", q_list=(0.01, 0.02), phi_list=(0.0, 45.0, 90.0))
    read = []
    original = h5py.Dataset.__getitem__

    def spy(self, args):
        read.append(self.name)
        return original(self, args)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    load_xpcs(path, wavevector_q=0.02, phi_ranges=[(40, 50)])
    matrices = [name for name in read if "correlation_map" in name]
    assert matrices == ["/xpcs/twotime/correlation_map/c2_00005"]


def test_nan_outside_the_selection_is_never_read(tmp_path):
    bad = constant_half(2.0)
    bad[0, 1] = np.nan
    path = write_aps_u(tmp_path / "a.h5", phi_list=(0.0, 90.0), matrices=[constant_half(1.0), bad])
    data = load_xpcs(path, wavevector_q=0.01, phi_ranges=[(-5, 5)])
    assert data.n_angles == 1 and np.all(np.isfinite(data.c2))
    # and inside the selection but outside the frame window it is harmless too
    data = load_xpcs(path, wavevector_q=0.01, start_frame=2)
    assert data.n_angles == 2 and np.all(np.isfinite(data.c2))


# ---------------------------------------------------------------- legacy


def test_legacy_layout_natural_key_order(tmp_path):
    names = ["c2_1", "c2_2", "c2_10"]  # natural order 1, 2, 10 (not 1, 10, 2)
    matrices = [constant_half(1.0), constant_half(2.0), constant_half(10.0)]
    path = write_legacy(tmp_path / "l.h5", q=[0.01, 0.01, 0.01], phi=[0, 45, 90], matrices=matrices, names=names)
    data = load_xpcs(path, wavevector_q=0.01)
    assert data.layout == "aps-legacy"
    np.testing.assert_array_equal(data.phi, [0, 45, 90])
    np.testing.assert_array_equal(data.c2[:, 2, 3], [1.0, 2.0, 10.0])


def test_legacy_q_selection(tmp_path):
    matrices = [constant_half(v) for v in (1.0, 2.0, 3.0, 4.0)]
    path = write_legacy(tmp_path / "l.h5", q=[0.01, 0.01, 0.03, 0.03], phi=[0, 90, 0, 90], matrices=matrices)
    data = load_xpcs(path, wavevector_q=0.025)
    assert data.q == 0.03
    np.testing.assert_array_equal(data.c2[:, 0, 1], [3.0, 4.0])


# ---------------------------------------------------------------- matrices


def test_full_matrix_kept_as_is(tmp_path):
    rng = np.random.default_rng(1)
    full = rng.uniform(1.0, 1.5, (N, N))
    full = 0.5 * (full + full.T)
    path = write_aps_u(tmp_path / "a.h5", phi_list=(0.0,), matrices=[full])
    data = load_xpcs(path, wavevector_q=0.01)
    np.testing.assert_array_equal(data.c2[0], full)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_half_rebuild_is_exact(dtype):
    rng = np.random.default_rng(2)
    full = rng.uniform(1.0, 1.5, (30, 30)).astype(dtype)
    full = np.triu(full) + np.triu(full, 1).T
    upper = np.triu(full)
    assert is_triangular_half(upper) and is_triangular_half(upper.T)
    assert not is_triangular_half(full)
    np.testing.assert_array_equal(full_symmetric(upper), full.astype(np.float64))
    np.testing.assert_array_equal(full_symmetric(upper.T), full.astype(np.float64))
    np.testing.assert_array_equal(full_symmetric(full), full.astype(np.float64))
    out = np.empty((30, 30))
    assert full_symmetric(upper, out=out) is out


def test_frame_slicing(tmp_path):
    index = np.arange(N, dtype=float)
    matrix = np.triu(1.0 + index[:, None] * 100 + index[None, :])  # entry (i, j) encodes i, j
    path = write_aps_u(tmp_path / "a.h5", phi_list=(0.0,), matrices=[matrix])
    data = load_xpcs(path, wavevector_q=0.01, start_frame=5, end_frame=12)
    assert (data.start_frame, data.end_frame, data.n_frames) == (5, 12, 8)
    assert data.c2[0, 0, 7] == 1.0 + 4 * 100 + 11  # frames 5 and 12 (1-based)
    assert data.c2[0, 7, 0] == data.c2[0, 0, 7]
    assert data.n_points == 8 * 7 // 2
    np.testing.assert_allclose(data.t, np.arange(8) * 0.1)
    default = load_xpcs(path, wavevector_q=0.01, start_frame=None, end_frame=None)
    assert (default.start_frame, default.end_frame) == (1, N)


# ---------------------------------------------------------------- dt


def test_dt_from_file_is_the_product_and_logged(tmp_path, caplog):
    path = write_aps_u(tmp_path / "a.h5", frame_time=0.001, stride=2, avg=5)
    with caplog.at_level(logging.INFO, logger="homodyne_mpi.data.loader"):
        data = load_xpcs(path, wavevector_q=0.01)
    assert data.dt == pytest.approx(0.01, rel=1e-15)
    assert data.dt_source == "file"
    assert any("dt taken from file: frame_time x stride x avg" in r.getMessage() for r in caplog.records)


def test_dt_from_config_wins(tmp_path):
    path = write_aps_u(tmp_path / "a.h5", frame_time=0.1)
    data = load_xpcs(path, wavevector_q=0.01, dt=0.5)
    assert (data.dt, data.dt_source) == (0.5, "config")
    assert load_xpcs(path, wavevector_q=0.01, dt="auto").dt_source == "file"


def test_no_dt_anywhere(tmp_path):
    path = write_aps_u(tmp_path / "nodt.h5", frame_time=None)
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "nodt.h5", "entry/instrument/detector_1/frame_time", "analyzer_parameters.dt")


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_xpcs(tmp_path / "absent.h5", wavevector_q=0.01)
    assert_input_error(excinfo, "absent.h5", "not found", "experimental_data.file_path")


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not hdf5\n")
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "notes.h5", "not an HDF5 file", "experimental_data.file_path")


def test_unknown_layout_lists_the_keys(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5["something/else"] = np.zeros(3)
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(
        excinfo, "other.h5", "unknown HDF5 layout", "xpcs/twotime/processed_bins", "xpcs/dqlist", "exchange/C2T_all"
    )


def test_missing_key(tmp_path):
    path = write_aps_u(tmp_path / "nophi.h5", skip=("dim1",))
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "nophi.h5", "missing key 'xpcs/qmap/dynamic_v_list_dim1'")


def test_processed_bin_without_matrix_is_an_error_not_a_shift(tmp_path):
    matrices = [constant_half(1.0), None, constant_half(3.0)]
    path = write_aps_u(tmp_path / "hole.h5", phi_list=(0.0, 45.0, 90.0), matrices=matrices)
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "hole.h5", "xpcs/twotime/correlation_map/c2_00002")
    # the bins around the hole keep their own matrices
    data = load_xpcs(path, wavevector_q=0.01, phi_ranges=[(80, 100)])
    assert data.c2[0, 0, 1] == 3.0


def test_bins_inconsistent_with_q_phi_lists(tmp_path):
    path = write_aps_u(tmp_path / "bins.h5", q_list=(0.01,), phi_list=(0.0, 90.0), bins=[1, 2, 3])
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "bins.h5", "xpcs/twotime/processed_bins", "xpcs/qmap/dynamic_v_list_dim0")


def test_legacy_list_lengths_inconsistent(tmp_path):
    path = tmp_path / "legacy.h5"
    with h5py.File(path, "w") as h5:
        h5["xpcs/dqlist"] = np.full((1, 3), 0.01)
        h5["xpcs/dphilist"] = np.zeros((1, 2))
        h5.create_group("exchange/C2T_all")["c2_00001"] = constant_half(1.0)
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "legacy.h5", "xpcs/dqlist", "xpcs/dphilist")


def test_legacy_matrix_count_inconsistent(tmp_path):
    path = write_legacy(tmp_path / "legacy.h5", q=[0.01, 0.01], phi=[0, 90], matrices=[constant_half(1.0)])
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "legacy.h5", "exchange/C2T_all", "xpcs/dqlist")


def test_non_square_matrix(tmp_path):
    path = write_aps_u(tmp_path / "rect.h5", phi_list=(0.0,), matrices=[np.ones((N, N + 1))])
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "rect.h5", "xpcs/twotime/correlation_map/c2_00001", "square")


def test_matrices_of_different_size(tmp_path):
    path = write_aps_u(tmp_path / "sizes.h5", matrices=[constant_half(1.0, N), constant_half(2.0, N + 2)])
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "sizes.h5", "c2_00001", "c2_00002", "shape")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_values(tmp_path, bad_value):
    bad = constant_half(2.0)
    bad[3, 5] = bad[4, 9] = bad[6, 6] = bad_value
    path = write_aps_u(tmp_path / "nan.h5", matrices=[constant_half(1.0), bad])
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01)
    assert_input_error(excinfo, "nan.h5", "'xpcs/twotime/correlation_map/c2_00002'", "has 3 NaN/inf")


def test_no_angle_left_lists_angles_and_ranges(tmp_path):
    path = write_aps_u(tmp_path / "a.h5", phi_list=(0.0, 90.0))
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01, phi_ranges=[(30, 60), SimpleNamespace(min_angle=120, max_angle=150)])
    assert_input_error(excinfo, "a.h5", "phi_filtering", "[0, 90]", "[30, 60], [120, 150]")


@pytest.mark.parametrize("start, end", [(0, 10), (5, N + 1), (10, 10), (12, 5)])
def test_frames_out_of_range(tmp_path, start, end):
    path = write_aps_u(tmp_path / "a.h5")
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=0.01, start_frame=start, end_frame=end)
    assert_input_error(excinfo, "a.h5", "start_frame", "end_frame", f"<= {N}")


def test_bad_wavevector(tmp_path):
    path = write_aps_u(tmp_path / "a.h5")
    with pytest.raises(InputError) as excinfo:
        load_xpcs(path, wavevector_q=-1)
    assert_input_error(excinfo, "a.h5", "wavevector_q")


# ---------------------------------------------------------------- selection


def test_select_nearest_q():
    q = np.array([0.01, 0.01, 0.02, 0.02, 0.02, 0.04])
    chosen, q_sel = select_nearest_q(q, 0.017)
    np.testing.assert_array_equal(chosen, [2, 3, 4])
    assert q_sel == 0.02
    chosen, q_sel = select_nearest_q(q, 0.015)  # tie -> the smaller q
    assert q_sel == 0.01 and list(chosen) == [0, 1]


def test_angle_ranges_any_convention():
    phi_pm = np.array([-175.0, -90.0, -5.0, 0.0, 5.0, 90.0, 180.0])
    phi_360 = np.mod(phi_pm, 360.0)  # same directions in [0, 360)
    for ranges in ([(170, 190)], [(-190, -170)], [(-180, -170), (170, 180)]):
        expected = [True, False, False, False, False, False, True]
        np.testing.assert_array_equal(angles_in_ranges(phi_pm, ranges), expected)
        np.testing.assert_array_equal(angles_in_ranges(phi_360, ranges), expected)
    for ranges in ([(-10, 10)], [(350, 370)], [(350, 10)]):  # the last one wraps
        expected = [False, False, True, True, True, False, False]
        np.testing.assert_array_equal(angles_in_ranges(phi_pm, ranges), expected)
        np.testing.assert_array_equal(angles_in_ranges(phi_360, ranges), expected)
    # inclusive bounds, AngleRange-like objects, full circle
    inclusive = angles_in_ranges([-5.0, 5.0, 5.0000001], [SimpleNamespace(min_angle=-5, max_angle=5)])
    np.testing.assert_array_equal(inclusive, [True, True, False])
    assert angles_in_ranges(phi_pm, [(-180, 180)]).all()
    assert not angles_in_ranges(phi_pm, []).any()


def test_frame_window():
    assert frame_window(None, None, 50) == (1, 50)
    assert frame_window(3, 7, 50) == (3, 7)
    assert frame_window(np.int64(2), None, 50) == (2, 50)
    with pytest.raises(InputError, match="valid|1 <= start_frame"):
        frame_window(1, 51, 50, source="f.h5")
    with pytest.raises(InputError, match="whole frame number"):
        frame_window(1.5, 10, 50)


# ---------------------------------------------------------------- noise


def test_noise_estimate_within_15_percent():
    n = 200
    t = np.arange(n) * 0.1
    model = 1.0 + 0.3 * np.exp(-np.abs(t[:, None] - t[None, :]) * (1 + 0.02 * t[None, :]))
    rng = np.random.default_rng(3)
    noise = np.triu(rng.normal(0.0, 0.01, (n, n)))
    noisy = model + noise + np.triu(noise, 1).T
    assert estimate_noise_sigma(noisy) == pytest.approx(0.01, rel=0.15)


def test_noise_floor_for_a_noiseless_matrix():
    n = 60
    t = np.arange(n) * 0.1
    model = 1.0 + 0.3 * np.exp(-np.abs(t[:, None] - t[None, :]))
    sigma = estimate_noise_sigma(model)
    assert 0 < sigma <= 2e-6
    assert estimate_noise_sigma(np.zeros((5, 5))) > 0
    with pytest.raises(ValueError):
        estimate_noise_sigma(np.ones((2, 2)))


def test_noise_estimate_subsamples_large_matrices():
    rng = np.random.default_rng(4)
    noisy = 1.0 + rng.normal(0.0, 0.02, (300, 300))
    assert estimate_noise_sigma(noisy, max_samples=5000) == pytest.approx(0.02, rel=0.15)


# ---------------------------------------------------------------- config adapter, imports


def test_load_config_dataset_uses_filter_only_when_enabled(tmp_path):
    path = write_aps_u(tmp_path / "a.h5", phi_list=(0.0, 90.0))
    cfg = SimpleNamespace(
        analyzer_parameters=SimpleNamespace(dt=None, start_frame=2, end_frame=10, scattering=SimpleNamespace(wavevector_q=0.01)),
        experimental_data=SimpleNamespace(file_path=str(tmp_path / "other.h5")),
        phi_filtering=SimpleNamespace(enabled=False, target_ranges=[SimpleNamespace(min_angle=80, max_angle=100)]),
    )
    data = load_config_dataset(cfg, dataset=path)
    assert isinstance(data, XPCSData)
    assert (data.n_angles, data.start_frame, data.end_frame, data.dt_source) == (2, 2, 10, "file")
    cfg.phi_filtering.enabled = True
    np.testing.assert_array_equal(load_config_dataset(cfg, dataset=path).phi, [90.0])
    cfg.phi_filtering.target_ranges = []
    with pytest.raises(ConfigError, match="target_ranges"):
        load_config_dataset(cfg, dataset=path)
    with pytest.raises(InputError, match="other.h5"):
        cfg.phi_filtering.enabled = False
        load_config_dataset(cfg)


def test_load_config_dataset_entries_and_their_own_q(tmp_path):
    path = write_aps_u(tmp_path / "a.h5", q_list=(0.01, 0.02), phi_list=(0.0, 90.0))
    entries = [
        SimpleNamespace(file_path=str(path), name="low", wavevector_q=None),
        SimpleNamespace(file_path=str(path), name="high", wavevector_q=[0.02]),
    ]
    cfg = SimpleNamespace(
        analyzer_parameters=SimpleNamespace(dt=0.1, start_frame=1, end_frame=None, scattering=SimpleNamespace(wavevector_q=0.01)),
        phi_filtering=SimpleNamespace(enabled=False, target_ranges=[]),
        resolved_datasets=lambda: entries,
    )
    assert load_config_dataset(cfg, entries[0]).q == 0.01
    assert load_config_dataset(cfg, entries[1]).q == 0.02
    with pytest.raises(ConfigError, match="2 datasets"):
        load_config_dataset(cfg)
    entries.pop()
    assert load_config_dataset(cfg).q == 0.01


def test_importing_data_does_not_import_jax():
    code = "import sys, homodyne_mpi.data; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
