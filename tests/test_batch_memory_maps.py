"""A long batch in one process does not keep every data set's compiled kernels or freed heap.

Each data set's model spec (q, dt, frames) is a static argument of the NLSQ kernels, so every data set
compiles new ones, each holding memory maps; JAX kept them all (about 320 maps per small static data set
with the jackknife, about 3,150 with CMC) until a process passed ``vm.max_map_count`` and died. A CMC
data set's sampler is compiled for its priors and never used again, and glibc kept the heap it freed:
the resident set grew by about 100 MB per small CMC data set.
"""

from __future__ import annotations

import numpy as np
from conftest import write_config

from homodyne_mpi import pipeline
from homodyne_mpi.batch_memory import MAPS_LIMIT_CAP, default_maps_limit, max_map_count, memory_map_count, resident_megabytes
from homodyne_mpi.data.simulate import simulate_dataset
from homodyne_mpi.parallel import SerialComm

LIMIT_ABOVE_START = 1200
"""The batch's ``maps_limit``: this many maps above the count when the test starts (about four data sets)."""
MARGIN = 1500
"""The count after the last data set may exceed the count after the first two by at most this (about 100
kernels); keeping every kernel, 12 data sets ended about 3,300 above it (1,577 to 4,903)."""
SHAPES = [(30, 2), (40, 3), (50, 2), (30, 3)]
"""(frames, angles) of the data sets in turn; each data set has its own q as well, as a batch over q bins."""


def test_maps_count_is_read_on_linux():
    count = memory_map_count()
    assert count is not None and count > 10
    assert max_map_count() > 0 and default_maps_limit() == min(max_map_count() // 2, MAPS_LIMIT_CAP)


def simulated_batch(tmp_path, n_datasets: int) -> list[dict]:
    """``n_datasets`` small static data sets of the ``SHAPES`` in turn, each with its own q."""
    datasets = []
    for k in range(n_datasets):
        n_frames, n_angles = SHAPES[k % len(SHAPES)]
        q = 0.004 + 0.0001 * k
        path = tmp_path / f"d{k}.h5"
        simulate_dataset(
            path,
            mode="static",
            shear_form="paper",
            q=q,
            dt=0.1,
            gap=2e6,
            phi=list(np.linspace(0.0, 90.0, n_angles)),
            n_frames=n_frames,
            physical=[8000.0 * (0.0054 / q) ** 2, -0.3, 30.0],
            contrast=0.3,
            offset=1.0,
            noise_sigma=0.01,
            seed=k + 1,
        )
        datasets.append({"file_path": str(path), "name": f"d{k}", "wavevector_q": [q]})
    return datasets


def batch_config(tmp_path, datasets: list[dict], **settings):
    """The loaded config of a batch over ``datasets`` (jackknife on, plots off)."""
    from homodyne_mpi.config import load_config

    path = write_config(
        tmp_path / "batch.yaml",
        "static",
        **{
            "analyzer_parameters.dt": 0.1,
            "experimental_data.file_path": None,
            "experimental_data.datasets": datasets,
            "output.plots": False,
            "optimization.nlsq.uncertainty": "jackknife",
            "optimization.nlsq.jackknife_blocks": 10,
            **settings,
        },
    )
    return load_config(str(path))


def record_at_each_start(monkeypatch, measure) -> list:
    """``measure()`` at the start of each data set of a batch (after the one before and its clean-up)."""
    values: list = []
    run_dataset = pipeline.BatchRunner.run_dataset

    def measured(self, dataset, record):
        values.append(measure())
        return run_dataset(self, dataset, record)

    monkeypatch.setattr(pipeline.BatchRunner, "run_dataset", measured)
    return values


def test_batch_of_many_shapes_keeps_maps_bounded(tmp_path, monkeypatch):
    config = batch_config(tmp_path, simulated_batch(tmp_path, 12))
    counts = record_at_each_start(monkeypatch, memory_map_count)
    limit = memory_map_count() + LIMIT_ABOVE_START
    code = pipeline.run_batch(config, SerialComm(), method="nlsq", output_dir=tmp_path / "out", maps_limit=limit)
    last = memory_map_count()
    assert code == 0
    assert all((tmp_path / "out" / f"d{k}" / "nlsq" / "result.json").exists() for k in range(12))
    after_first_two = counts[2]
    assert last <= after_first_two + MARGIN, f"maps at the start of each data set {counts}, after the last {last}"


RSS_MARGIN_MB = 150.0
"""A CMC batch's resident set at the start of its last data set may exceed that at the start of its second by at
most this; keeping each data set's sampler and freed heap, five data sets ended about 500 MB above it (839 to 1,335 MB)."""


def test_cmc_batch_keeps_resident_memory_bounded(tmp_path, monkeypatch):
    tiny_cmc = {
        "optimization.cmc.per_shard_mcmc.num_warmup": 20,
        "optimization.cmc.per_shard_mcmc.num_samples": 20,
        "optimization.cmc.per_shard_mcmc.num_chains": 2,
        "optimization.cmc.sharding.num_shards": 2,
        "optimization.cmc.combination.max_rhat": 10.0,  # 20 draws: the data sets must pass to be written
        "optimization.cmc.combination.max_divergence_rate": 1.0,
    }
    config = batch_config(tmp_path, simulated_batch(tmp_path, 5), **tiny_cmc)
    resident = record_at_each_start(monkeypatch, resident_megabytes)
    code = pipeline.run_batch(config, SerialComm(), method="cmc", output_dir=tmp_path / "out")
    assert code == 0
    assert all((tmp_path / "out" / f"d{k}" / "cmc" / "result.json").exists() for k in range(5))
    assert resident[-1] <= resident[1] + RSS_MARGIN_MB, f"resident MB at the start of each data set: {resident}"
