"""Synthetic files: simulate -> load round trips against the model, and the config adapter."""

from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from homodyne_mpi.data import (
    DEFAULT_SIMULATED_PHI,
    estimate_noise_sigma,
    load_config_dataset,
    load_xpcs,
    simulate_dataset,
    simulate_from_config,
    truth_path,
)
from homodyne_mpi.errors import ConfigError, InputError
from homodyne_mpi.model import ModelSpec, c2_grid

PHYSICAL = {
    "static": [1000.0, -0.3, 5.0],
    "laminar_flow": [1000.0, -0.3, 5.0, 0.02, 0.1, 0.001, 8.0],
}
SHEAR_FORM = {"static": "homodyne-v2", "laminar_flow": "paper"}
Q, DT, GAP = 0.01, 0.1, 1.0e5

_c2_grid = jax.jit(c2_grid, static_argnums=4)  # one compile per grid instead of per operation


def model(mode, phi, n_frames, contrast, offset, q=Q, shear_form=None):
    spec = ModelSpec(mode, shear_form or SHEAR_FORM[mode], q, DT, n_frames, GAP)
    n_phi = len(phi)
    return np.asarray(
        _c2_grid(
            jnp.asarray(PHYSICAL[mode]),
            jnp.broadcast_to(jnp.asarray(contrast, dtype=float), (n_phi,)),
            jnp.broadcast_to(jnp.asarray(offset, dtype=float), (n_phi,)),
            jnp.asarray(phi, dtype=float),
            spec,
        )
    )


def simulate(path, mode="laminar_flow", *, phi=(-30.0, 0.0, 45.0), n_frames=50, **kwargs):
    kwargs.setdefault("contrast", [0.45, 0.5, 0.55])
    kwargs.setdefault("offset", 1.0)
    return simulate_dataset(
        path,
        mode=mode,
        shear_form=SHEAR_FORM[mode],
        q=Q,
        dt=DT,
        n_frames=n_frames,
        gap=GAP,
        physical=PHYSICAL[mode],
        phi=list(phi),
        **kwargs,
    )


@pytest.mark.parametrize("layout", ["aps-u", "aps-legacy"])
@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-6)])
def test_round_trip_is_the_model(tmp_path, layout, mode, dtype, tolerance):
    path = tmp_path / "sim.h5"
    phi = [45.0, -30.0, 0.0]  # stored unsorted; the loader sorts
    contrast = [0.55, 0.45, 0.5]
    truth = simulate(path, mode, phi=phi, contrast=contrast, layout=layout, dtype=dtype)
    data = load_xpcs(path, wavevector_q=Q)
    assert (data.layout, data.dt_source, data.q) == (layout, "file", Q)
    assert data.dt == DT
    np.testing.assert_array_equal(data.phi, [-30.0, 0.0, 45.0])
    expected = model(mode, [-30.0, 0.0, 45.0], 50, [0.45, 0.5, 0.55], 1.0)
    np.testing.assert_allclose(data.c2, expected, rtol=0, atol=tolerance)
    assert truth["dtype"] == dtype and truth["layout"] == layout
    with h5py.File(path, "r") as h5:
        key = "xpcs/twotime/correlation_map/c2_00001" if layout == "aps-u" else "exchange/C2T_all/c2_00001"
        stored = h5[key]
        assert stored.dtype == np.dtype(dtype)
        assert stored.compression == ("lzf" if dtype == "float32" else None)
        matrix = stored[()]
    assert np.all(np.tril(matrix, -1) == 0)  # an upper half, diagonal included
    np.testing.assert_allclose(np.diag(matrix), np.diag(expected[2]), atol=tolerance)


def test_decoy_q_is_not_selected(tmp_path):
    path = tmp_path / "decoy.h5"
    simulate(path, "static", decoy_q=[Q * 1.5], contrast=0.5)
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(h5["xpcs/qmap/dynamic_v_list_dim0"][()], [Q, Q * 1.5])
        np.testing.assert_array_equal(h5["xpcs/twotime/processed_bins"][()], np.arange(1, 7))
    main = load_xpcs(path, wavevector_q=Q * 1.1)
    assert main.q == Q and main.n_angles == 3
    np.testing.assert_allclose(main.c2, model("static", main.phi, 50, 0.5, 1.0), atol=1e-12)
    decoy = load_xpcs(path, wavevector_q=Q * 1.4)
    assert decoy.q == Q * 1.5
    np.testing.assert_allclose(decoy.c2, model("static", decoy.phi, 50, 0.5, 1.0, q=Q * 1.5), atol=1e-12)
    assert np.max(np.abs(decoy.c2 - main.c2)) > 1e-3


def test_angle_filter_and_frame_slice_on_simulated_data(tmp_path):
    path = tmp_path / "sim.h5"
    simulate(path, phi=(-90.0, -10.0, 5.0, 175.0), contrast=0.5, layout="aps-legacy")
    data = load_xpcs(path, wavevector_q=Q, phi_ranges=[(-15, 15), (170, 190)], start_frame=1, end_frame=30)
    np.testing.assert_array_equal(data.phi, [-10.0, 5.0, 175.0])
    assert data.n_frames == 30
    np.testing.assert_allclose(data.c2, model("laminar_flow", data.phi, 30, 0.5, 1.0), atol=1e-12)


def test_window_start_is_the_model_origin(tmp_path):
    path = tmp_path / "window.h5"
    truth = simulate(path, n_frames=60, start_frame=11)
    assert (truth["start_frame"], truth["end_frame"], truth["n_frames"]) == (11, 60, 60)
    data = load_xpcs(path, wavevector_q=Q, start_frame=11)
    np.testing.assert_allclose(data.c2, model("laminar_flow", data.phi, 50, [0.45, 0.5, 0.55], 1.0), atol=1e-12)
    # the frames before the window hold the model on the whole file's grid
    whole = load_xpcs(path, wavevector_q=Q, end_frame=10)
    full_model = model("laminar_flow", data.phi, 60, [0.45, 0.5, 0.55], 1.0)
    np.testing.assert_allclose(whole.c2, full_model[:, :10, :10], atol=1e-12)


def test_truth_file(tmp_path):
    path = tmp_path / "sim.h5"
    truth = simulate(path, "static", noise_sigma=0.002, seed=7, contrast=[0.4, 0.5, 0.6], offset=[1.0, 1.01, 0.99])
    assert truth_path(path).name == "sim.h5.truth.json"
    stored = json.loads(truth_path(path).read_text())
    assert stored == truth
    for key in (
        "analysis_mode",
        "shear_form",
        "parameters",
        "contrast",
        "offset",
        "phi",
        "q",
        "dt",
        "n_frames",
        "gap",
        "noise_sigma",
        "seed",
        "layout",
        "dtype",
    ):
        assert key in stored
    assert stored["parameters"] == {"D0": 1000.0, "alpha": -0.3, "D_offset": 5.0}
    assert stored["offset"] == [1.0, 1.01, 0.99] and stored["seed"] == 7


def test_noise_is_seeded_symmetric_and_estimable(tmp_path):
    n = 200
    simulate(tmp_path / "a.h5", "static", phi=(0.0,), contrast=0.5, n_frames=n, noise_sigma=0.01, seed=1)
    simulate(tmp_path / "b.h5", "static", phi=(0.0,), contrast=0.5, n_frames=n, noise_sigma=0.01, seed=1)
    simulate(tmp_path / "c.h5", "static", phi=(0.0,), contrast=0.5, n_frames=n, noise_sigma=0.01, seed=2)
    a, b, c = (load_xpcs(tmp_path / name, wavevector_q=Q).c2[0] for name in ("a.h5", "b.h5", "c.h5"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a, a.T)
    residual = a - model("static", [0.0], n, 0.5, 1.0)[0]
    upper = residual[np.triu_indices(n, 1)]
    assert np.std(upper) == pytest.approx(0.01, rel=0.05)
    assert estimate_noise_sigma(a) == pytest.approx(0.01, rel=0.15)


def test_large_matrix_in_row_blocks(tmp_path):
    n = 2000
    path = tmp_path / "big.h5"
    simulate(path, "static", phi=(0.0,), contrast=0.5, n_frames=n, dtype="float32")
    data = load_xpcs(path, wavevector_q=Q)
    assert data.c2.shape == (1, n, n) and data.c2.dtype == np.float64
    expected = model("static", [0.0], n, 0.5, 1.0)
    np.testing.assert_allclose(data.c2, expected, atol=1e-6)


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-6)])
def test_many_small_row_blocks_give_the_same_file(tmp_path, monkeypatch, dtype, tolerance):
    import homodyne_mpi.data.simulate as simulate_module

    monkeypatch.setattr(simulate_module, "_BLOCK_ENTRIES", 300)  # 9 rows per block at 30 frames
    monkeypatch.setattr(simulate_module, "_CHUNK_ENTRIES", 100)  # 3-row HDF5 chunks
    path = tmp_path / "blocks.h5"
    simulate(path, phi=(0.0,), contrast=0.5, n_frames=30, start_frame=14, dtype=dtype, compression="lzf")
    with h5py.File(path, "r") as h5:  # blocks 0-8, 9-17 (straddles frame 14), 18-26, 27-29
        stored = h5["xpcs/twotime/correlation_map/c2_00001"]
        assert stored.chunks == (3, 30)
        assert np.all(np.tril(stored[()], -1) == 0)
    window = load_xpcs(path, wavevector_q=Q, start_frame=14)
    np.testing.assert_allclose(window.c2, model("laminar_flow", [0.0], 17, 0.5, 1.0), atol=tolerance)
    before = load_xpcs(path, wavevector_q=Q, end_frame=13)
    full_model = model("laminar_flow", [0.0], 30, 0.5, 1.0)
    np.testing.assert_allclose(before.c2, full_model[:, :13, :13], atol=tolerance)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"noise_model": "pink"}, "noise_model"),
        ({"layout": "nexus"}, "layout"),
        ({"dtype": "float16"}, "dtype"),
        ({"contrast": [0.5, 0.5]}, "contrast"),
        ({"noise_sigma": -1.0}, "noise"),
        ({"start_frame": 50}, "start_frame"),
        ({"n_frames": 1}, "n_frames"),
        ({"compression": "zstd"}, "compression"),
        ({"seed": -1}, "seed"),
        ({"decoy_q": [Q]}, "decoy"),
    ],
)
def test_bad_simulate_arguments(tmp_path, kwargs, needle):
    path = tmp_path / "bad.h5"
    with pytest.raises(InputError, match=needle):
        simulate(path, **kwargs)
    assert not path.exists()


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write"):
        simulate(blocker / "sim.h5", n_frames=5)


# ---------------------------------------------------------------- from a config


def make_config(path, *, mode="laminar_flow", start_frame=1, end_frame=40, dt=DT, contrast=0.5, offset=1.0):
    names = ["phi0", "D0", "alpha", "D_offset", "gamma_dot_t0", "beta", "gamma_dot_t_offset"]
    canonical = dict(zip(ModelSpec("laminar_flow", "paper", Q, DT, 2).physical_names, PHYSICAL["laminar_flow"]))
    if mode == "static":
        names = ["alpha", "D0", "D_offset"]
    return SimpleNamespace(
        analysis_mode=mode,
        shear_form=SHEAR_FORM[mode],
        analyzer_parameters=SimpleNamespace(
            dt=dt,
            start_frame=start_frame,
            end_frame=end_frame,
            scattering=SimpleNamespace(wavevector_q=Q),
            geometry=SimpleNamespace(stator_rotor_gap=GAP),
        ),
        experimental_data=SimpleNamespace(file_path=str(path)),
        phi_filtering=SimpleNamespace(enabled=False, target_ranges=[]),
        initial_parameters=SimpleNamespace(
            parameter_names=names,
            values=[canonical[name] for name in names],
            per_angle_scaling=SimpleNamespace(mode="individual", contrast=contrast, offset=offset),
        ),
    )


@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
def test_simulate_from_config_round_trip(tmp_path, mode):
    path = tmp_path / "cfg.h5"
    cfg = make_config(path, mode=mode)
    truth = simulate_from_config(cfg, path, phi=[0.0, 90.0], dtype="float64")
    assert list(truth["parameters"].values()) == PHYSICAL[mode]  # canonical order
    assert truth["n_frames"] == 40
    data = load_config_dataset(cfg)
    assert data.n_frames == 40 and data.dt == DT
    np.testing.assert_allclose(data.c2, model(mode, [0.0, 90.0], 40, 0.5, 1.0), atol=1e-12)


def test_simulate_from_config_window_and_default_angles(tmp_path):
    path = tmp_path / "cfg.h5"
    cfg = make_config(path, start_frame=6, end_frame=30, contrast=[0.4, 0.42, 0.44, 0.46, 0.48, 0.5])
    truth = simulate_from_config(cfg, path, dtype="float32", layout="aps-legacy", noise=0.001, seed=3)
    assert truth["phi"] == list(DEFAULT_SIMULATED_PHI) and len(truth["phi"]) == 6
    assert truth["phi"][0] == -90.0 and truth["phi"][-1] == 75.0
    data = load_config_dataset(cfg)
    assert data.c2.shape == (6, 25, 25)
    assert (data.start_frame, data.end_frame) == (6, 30)


def test_simulate_from_config_errors(tmp_path):
    path = tmp_path / "cfg.h5"
    with pytest.raises(InputError, match="analyzer_parameters.dt"):
        simulate_from_config(make_config(path, dt=None), path)
    with pytest.raises(InputError, match="analyzer_parameters.dt"):
        simulate_from_config(make_config(path, dt="auto"), path)
    with pytest.raises(InputError, match="end_frame"):
        simulate_from_config(make_config(path, end_frame=None), path)
    with pytest.raises(InputError, match="contrast"):
        simulate_from_config(make_config(path, contrast=[0.5, 0.5, 0.5]), path, phi=[0.0, 90.0])
    cfg = make_config(path)
    cfg.initial_parameters.parameter_names = cfg.initial_parameters.parameter_names[:-1]
    cfg.initial_parameters.values = cfg.initial_parameters.values[:-1]
    with pytest.raises(ConfigError, match="gamma_dot_t_offset"):
        simulate_from_config(cfg, path)
    assert not path.exists()


def test_with_a_real_yaml_config(tmp_path):
    config = pytest.importorskip("homodyne_mpi.config")
    (tmp_path / "c.yaml").write_text(
        """
analysis_mode: laminar_flow
shear_form: paper
analyzer_parameters:
  dt: 0.1
  start_frame: 5
  end_frame: 40
  scattering: {wavevector_q: 0.01}
  geometry: {stator_rotor_gap: 100000}
experimental_data:
  file_path: sim.h5
phi_filtering:
  enabled: true
  target_ranges:
    - {min_angle: -10, max_angle: 10}
    - {min_angle: 170, max_angle: -170}
initial_parameters:
  parameter_names: [phi0, D0, alpha, D_offset, gamma_dot_t0, beta, gamma_dot_t_offset]
  values: [8.0, 1000.0, -0.3, 5.0, 0.02, 0.1, 0.001]
  per_angle_scaling: {contrast: 0.5, offset: 1.0}
"""
    )
    cfg = config.load_config(tmp_path / "c.yaml")
    truth = simulate_from_config(cfg, tmp_path / "sim.h5", phi=[0.0, 90.0, 180.0])
    assert list(truth["parameters"].values()) == PHYSICAL["laminar_flow"]
    data = load_config_dataset(cfg)  # the relative file_path is read from the config's folder
    np.testing.assert_array_equal(data.phi, [0.0, 180.0])
    assert (data.start_frame, data.end_frame, data.dt_source) == (5, 40, "config")
    np.testing.assert_allclose(data.c2, model("laminar_flow", [0.0, 180.0], 36, 0.5, 1.0), atol=1e-12)
