"""Load -> distribute -> NLSQ -> CMC -> write, for each data set of a batch.

Every rank runs ``run_batch``; rank groups (``parallel.groups``) fit different data sets at
once. Only a group's rank 0 (the leader) touches files: it prefetches data set ``k+1`` while
the group fits ``k`` and hands results to a background writer. A failed data set is recorded
and the batch goes on; world rank 0 gathers the outcomes into ``batch_summary.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import wait as wait_futures
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batch_memory import over_limit, release_compiled_kernels, return_freed_heap_if_grown
from .data.loader import count_config_dataset_points
from .data.points import PointSet
from .data.stream import PointSource
from .errors import ConfigError, HomodyneError, InputError, Interrupted, collective
from .fingerprint import run_fingerprint
from .fit_file import write_fit_file, write_streamed_fit_file
from .fit_matrices import matrix_plan
from .io import AsyncWriter, PrefetchLoader
from .nlsq import NLSQProblem, NLSQResult, attach_uncertainty, distribute_points, fit_nlsq
from .nlsq.checkpoint import LatestState, load_checkpoint, remove_checkpoint, save_checkpoint
from .nlsq.results import result_document
from .nlsq_summary import log_lines
from .parallel import Comm
from .parallel.groups import GroupPlan, plan_groups
from .parallel.scatter import scatter_point_source
from .parallel.signals import stop_requested
from .prepare import STREAM_BLOCK_POINTS, PreparedDataset, prepare_dataset

log = logging.getLogger(__name__)

METHODS = ("nlsq", "cmc", "both")

COMPLETE_MARKER = "complete.json"
"""Written last in a data set's folder: its results are whole (used to skip on rerun)."""


@dataclass
class DatasetOutcome:
    """One line of ``batch_summary.json``."""

    name: str
    source: str
    status: str = "ok"
    error: str | None = None
    error_type: str | None = None
    paths: dict[str, str] = field(default_factory=dict)
    timing_s: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchRunner:
    """Runs every data set of a config on rank groups (each group's rank 0 does its file I/O)."""

    cfg: Any
    world: Comm
    """Every rank of the job; its rank 0 writes ``batch_summary.json``."""
    _: KW_ONLY
    method: str
    output_dir: Path
    nlsq_warm_start: bool = True
    fresh: bool = False
    group_size: int | None = None
    """Ranks per group; ``None``: automatic."""
    maps_limit: int | None = None
    """Memory maps of a rank's process above which JAX's compiled kernels are dropped between data sets
    (``batch_memory``); ``None``: ``default_maps_limit()``."""
    comm: Comm = field(init=False)
    """This rank's group (the world until ``run`` splits it)."""
    _heap_floor_mb: float | None = field(default=None, init=False)
    """Resident set (MB) after the last return of freed heap (``release_memory``)."""
    writer: AsyncWriter | None = field(default=None, init=False)
    nlsq_documents: dict[Path, dict] = field(default_factory=dict, init=False)
    """Rank 0: each data set's NLSQ result document (reference lines in CMC figures)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method '{self.method}' -- choose one of {', '.join(METHODS)}")
        self.output_dir = Path(self.output_dir)
        self.comm = self.world

    def run(self) -> int:
        """Fit every data set; returns the exit code (0 all ok, 2 only bad input, 1 otherwise); a signal
        (SIGTERM/SIGUSR1) ends the batch with ``Interrupted`` once finished work is saved."""
        datasets = self.world.run_on_root(self.prepare_output)
        plan = self.world.run_on_root(lambda: self.plan_groups(datasets))
        group = plan.group_of(self.world.rank)
        self.comm = self.world.split(group) if plan.n_groups > 1 else self.world
        mine = plan.datasets[group]
        outcomes: dict[int, DatasetOutcome] = {}
        interrupted: Interrupted | None = None
        batch_start = time.perf_counter()
        loader = None
        if self.comm.is_root:
            self.writer = AsyncWriter(max_workers=2)
            loader = iter(
                PrefetchLoader([datasets[i] for i in mine], lambda entry: prepare_dataset(self.cfg, entry, self.method))
            )
            if not self.world.is_root:
                logging.getLogger("homodyne_mpi").setLevel(min(logging.getLogger("homodyne_mpi").level, logging.INFO))
            groups = (
                f"; group {group + 1}/{plan.n_groups} of {self.comm.size} rank(s) fits {len(mine)}" if plan.n_groups > 1 else ""
            )
            log.info("batch of %d data set(s), method %s, %d rank(s)%s", len(datasets), self.method, self.world.size, groups)
        try:
            for position, index in enumerate(mine):
                raise_if_stop_requested(self.comm, "between data sets")
                record = next(loader) if loader is not None else None
                log.info("data set %d/%d: %s", position + 1, len(mine), datasets[index].name)
                outcomes[index] = self.run_dataset(datasets[index], record)
                if position + 1 < len(mine):
                    self.release_memory()
        except Interrupted as error:
            interrupted = error
        finally:
            if loader is not None:
                loader.close()
        return self.finish(outcomes, plan, batch_start, interrupted)

    def release_memory(self) -> None:
        """Between data sets (``batch_memory``): drop JAX's compiled kernels after a data set that ran CMC (its
        sampler was compiled for that data set's priors and is never used again) or when this process holds more
        than ``maps_limit`` memory maps (each data set's model spec compiles new NLSQ kernels, and JAX keeps
        them), after waiting for the background writes (writing ``fit.h5`` runs a kernel); then hand freed heap
        back to the system once the resident set has grown ``HEAP_TRIM_GROWTH_MB`` since the last time."""
        if self.method in ("cmc", "both") or over_limit(self.maps_limit):
            if self.writer is not None:
                self.writer.wait_all()
            release_compiled_kernels()
        self._heap_floor_mb = return_freed_heap_if_grown(self._heap_floor_mb)

    def plan_groups(self, datasets: list) -> GroupPlan:
        """World rank 0: the rank groups and their data sets (sizes read from the files' metadata)."""
        if self.world.size == 1 or len(datasets) <= 1:
            return plan_groups(self.world.size, [1] * len(datasets), self.world.size)
        counts = [count_config_dataset_points(self.cfg, entry) for entry in datasets]
        plan = plan_groups(self.world.size, counts, self.group_size)
        sizes = "/".join(map(str, sorted(set(plan.rank_counts))))
        how = "compute.rank_group_size" if self.group_size else "automatic from the data set sizes"
        log.info("rank groups: %d group(s) of %s rank(s) (%s)", plan.n_groups, sizes, how)
        return plan

    def prepare_output(self) -> list:
        """Rank 0: the data sets to fit, after checking the results folder can be written."""
        datasets = self.cfg.resolved_datasets()
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            probe = self.output_dir / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise InputError(
                f"cannot write results to '{self.output_dir}': {error.strerror or error} -- "
                "choose a writable folder with --output-dir or output.output_dir"
            ) from None
        return datasets

    def leader_writer(self) -> AsyncWriter:
        """The group leader's writer: only the leader (``comm.is_root``) writes results."""
        assert self.writer is not None, "the group leader holds the writer"
        return self.writer

    def close_writer(self) -> list[str]:
        """Group leader: wait for every queued write, stop the writer; the failed writes, described."""
        writer = self.writer
        if writer is None:
            return []
        failures = [failure.describe() for failure in writer.wait_all()]
        writer.shutdown()
        return failures

    def finish(
        self, outcomes: dict[int, DatasetOutcome], plan: GroupPlan, batch_start: float, interrupted: Interrupted | None
    ) -> int:
        """Wait for every group's writes, write ``batch_summary.json`` on world rank 0, report failures; a signal
        seen by any group ends every rank with ``Interrupted`` (no summary)."""
        if self.world.allreduce_sum(np.array([0.0 if interrupted is None else 1.0]))[0] > 0:
            if self.comm.is_root:
                self.close_writer()
            raise collective(
                interrupted
                or Interrupted(
                    "stopped by a signal in another rank group; finished work was saved -- run the same command to resume"
                )
            )
        failures = self.close_writer() if self.comm.is_root and not self.world.is_root else []
        gathered = self.world.gather((outcomes, failures) if self.comm.is_root else None)
        code = 0
        if self.world.is_root and gathered is not None and self.writer is not None:
            everything: dict[int, DatasetOutcome] = {}
            for group_outcomes, group_failures in filter(None, gathered):
                everything.update(group_outcomes)
                failures += group_failures
            ordered = [everything[index] for index in sorted(everything)]
            group_of = {index: group for group, indices in enumerate(plan.datasets) for index in indices}
            seconds = time.perf_counter() - batch_start
            failed = [o for o in ordered if o.status == "failed"]
            summary = {
                "n_datasets": len(ordered),
                "n_failed": len(failed),
                "method": self.method,
                "n_ranks": self.world.size,
                "rank_groups": list(plan.rank_counts),
                "wall_s": seconds,
                "datasets": [{**asdict(everything[index]), "group": group_of[index]} for index in sorted(everything)],
            }
            self.writer.submit_json(self.output_dir / "batch_summary.json", summary)
            failures += self.close_writer()
            for line in [f"data set '{o.name}': {o.error}" for o in failed] + [f"could not write {f}" for f in failures]:
                print(f"error: {line}", file=sys.stderr, flush=True)
            if failures or failed:  # 2 when only bad input failed
                code = 1 if failures or any(o.error_type not in ("InputError", "ConfigError") for o in failed) else 2
            log.info("batch done in %.1f s: %d ok, %d failed", seconds, len(ordered) - len(failed), len(failed))
        return int(self.world.bcast(code))

    def run_dataset(self, dataset, record) -> DatasetOutcome:
        """Fit one data set on every rank; rank 0 returns its outcome (others a stub)."""
        outcome = DatasetOutcome(name=dataset.name, source=str(dataset.file_path))
        out = self.output_dir / dataset.name
        status = self.root_status(record, out, outcome) if self.comm.is_root else None
        kind, payload, fingerprint, resume_state, streamed = self.comm.bcast(status)
        if kind == "failed":
            if self.comm.is_root:
                self.record_failure(outcome, payload)
            return outcome
        if kind == "complete":
            if self.comm.is_root:
                record.value.close()
            outcome.status = "complete"
            log.info(
                "data set %s: finished results of this config and data exist in %s; skipped (use --fresh to refit)",
                dataset.name,
                out,
            )
            return outcome
        problem: NLSQProblem = payload
        prepared = record.value if self.comm.is_root else None
        start = time.perf_counter()
        try:
            local = self.distribute(prepared, problem, streamed)
        except InputError as error:  # a streamed block could not be read: raised on every rank of the group
            if self.comm.is_root:
                self.record_failure(outcome, error)
            return outcome
        outcome.timing_s["distribute"] = time.perf_counter() - start
        nlsq_result = None
        futures = []
        if self.method in ("nlsq", "both") or self.nlsq_warm_start:
            latest = LatestState()
            try:
                nlsq_result = fit_nlsq(
                    problem, local, self.comm, self.cfg.optimization.nlsq, resume=resume_state, on_accept=latest.update
                )
                attach_uncertainty(nlsq_result, problem, self.cfg.optimization.nlsq)
            except Interrupted:
                state = latest if latest.theta is not None else resume_state
                if self.comm.is_root and state is not None:
                    save_checkpoint(out / "nlsq", state, problem.names, fingerprint)
                raise
            del local
            if self.comm.is_root:
                futures += self.write_nlsq(out, dataset, nlsq_result, problem, record.value, outcome)
        if self.method in ("cmc", "both"):
            futures += self.run_cmc_stage(out, problem, prepared, nlsq_result, outcome)
        if self.comm.is_root and outcome.status == "ok":
            marker = {"fingerprint": fingerprint, "method": self.method, "paths": outcome.paths}
            self.leader_writer().submit_call(out / COMPLETE_MARKER, write_marker_after, futures, marker)
            remove_checkpoint(out / "nlsq")
        return outcome

    def distribute(self, prepared: PreparedDataset | None, problem: NLSQProblem, streamed: bool) -> PointSet:
        """Every rank's chunks of the data set's points (collective): scattered whole, or streamed from rank 0's file."""
        chunk_size = self.cfg.optimization.nlsq.chunk_size
        if not streamed:
            return distribute_points(prepared.points if prepared else None, problem.n_points, self.comm, chunk_size)
        source = prepared.data if prepared is not None and isinstance(prepared.data, PointSource) else None
        try:
            blocks = source.point_blocks(problem.noise_sigma, STREAM_BLOCK_POINTS) if source is not None else None
            return scatter_point_source(blocks, problem.n_points, self.comm, chunk_size)
        finally:
            if prepared is not None:
                prepared.close()

    def root_status(self, record, out: Path, outcome: DatasetOutcome) -> tuple:
        """Rank 0: ``(kind, payload, fingerprint, resume theta, streamed)`` to broadcast for a data set."""
        if not record.ok:
            return ("failed", record.error, None, None, False)
        prepared = record.value
        outcome.timing_s["load"] = record.load_s
        problem = prepared.problem
        fingerprint = run_fingerprint(self.cfg.to_dict(), prepared.data.source, problem.n_points, problem.names)
        if self.fresh:
            remove_checkpoint(out / "nlsq")
            shutil.rmtree(out / "cmc" / "shards", ignore_errors=True)
            (out / COMPLETE_MARKER).unlink(missing_ok=True)
        elif is_complete(out, fingerprint, self.method):
            return ("complete", None, fingerprint, None, False)
        resume = None if self.fresh else load_checkpoint(out / "nlsq", problem.names, fingerprint)
        return ("ok", problem, fingerprint, resume, prepared.streamed)

    def run_cmc_stage(self, out: Path, problem, prepared, nlsq_result, outcome: DatasetOutcome) -> list:
        """CMC on every rank; rank 0 writes its result (a too-few-shards error is recorded)."""
        from .cmc import run_cmc
        from .cmc.calibration import check_warm_start, likelihood_calibration, uncalibrated_warning

        start = time.perf_counter()
        calibrate = self.cfg.optimization.cmc.calibrate
        calibration = likelihood_calibration(nlsq_result, problem) if calibrate else 1.0
        if calibration > 1.0:
            log.info("CMC likelihood tempered by %.3g (NLSQ jackknife / model variance, t-widened)", calibration)
        warning = uncalibrated_warning(calibrate, nlsq_result)
        if warning is not None and self.comm.is_root:
            log.warning("%s", warning)
        warm_start = nlsq_result if self.nlsq_warm_start else None
        points, output_dir = (prepared.points, out) if prepared else (None, None)
        try:
            check_warm_start(warm_start)
            cmc_result = run_cmc(
                self.cfg, problem, points, self.comm, warm_start=warm_start, output_dir=output_dir, calibration=calibration
            )
        except Interrupted:
            raise
        except HomodyneError as error:
            if self.comm.is_root:
                self.record_failure(outcome, error)
            return []
        outcome.timing_s["cmc"] = time.perf_counter() - start
        if not self.comm.is_root or cmc_result is None:
            return []
        cmc_result.extra["calibration_warning"] = warning
        document = cmc_result.to_json_dict()
        posterior = cmc_result.posterior_arrays()
        writer = self.leader_writer()
        outcome.paths.update(cmc_result=str(out / "cmc" / "result.json"), cmc_posterior=str(out / "cmc" / "posterior.h5"))
        futures = [
            writer.submit_json(out / "cmc" / "result.json", document),
            writer.submit_hdf5(out / "cmc" / "posterior.h5", posterior),
        ]
        if self.cfg.output.plots:
            from .plots import submit_cmc_figures

            submit_cmc_figures(writer, out, document, posterior, nlsq_doc=self.nlsq_documents.get(out))
        return futures

    def write_nlsq(
        self, out: Path, dataset, result: NLSQResult, problem, prepared: PreparedDataset, outcome: DatasetOutcome
    ) -> list:
        """Rank 0: queue ``nlsq/result.json`` and ``nlsq/fit.h5`` on the background writer; returns the futures
        (a streamed data set's ``fit.h5`` is written from a reopened file, without figures)."""
        writer = self.leader_writer()
        start = time.perf_counter()
        timing = {"load": outcome.timing_s.get("load", 0.0), **result.timing_s}
        # a streamed data set's PointSource has every metadata field the document reads
        document = result_document(result, problem, self.cfg, prepared.data, dataset=dataset.name, timing_s=timing)  # type: ignore[arg-type]
        figures = None
        if self.cfg.output.plots and not prepared.streamed:
            from .plots import submit_nlsq_figures

            def figures(arrays, document=document):
                submit_nlsq_figures(writer, out, document, arrays)

        n_frames = prepared.data.n_frames
        plan = matrix_plan(self.cfg.output.fit_matrices, self.cfg.output.fit_matrix_max_frames, n_frames)
        if plan.mode != "full":
            log.info("%s: fit.h5 %s (output.fit_matrices)", dataset.name, plan.summary(n_frames))
        if prepared.streamed:
            if self.cfg.output.plots:
                log.info(
                    "%s: streamed data set, c2 figures not drawn (draw them from fit.h5 with homodyne-mpi plot)", dataset.name
                )
            reopen = functools.partial(PointSource.from_config, self.cfg, dataset)
            fit_file = writer.submit_call(out / "nlsq" / "fit.h5", write_streamed_fit_file, result, problem, reopen, plan)
        else:
            fit_file = writer.submit_call(out / "nlsq" / "fit.h5", write_fit_file, result, problem, prepared.data, plan, figures)
        document["timing_s"]["write"] = time.perf_counter() - start
        futures = [fit_file, writer.submit_json(out / "nlsq" / "result.json", document)]
        self.nlsq_documents[out] = document
        outcome.timing_s.update({f"nlsq_{k}": v for k, v in result.timing_s.items()})
        outcome.paths.update(nlsq_result=str(out / "nlsq" / "result.json"), nlsq_fit=str(out / "nlsq" / "fit.h5"))
        for line in log_lines(document):  # the fit as result.json reports it (value +- std, std_model beside it, warnings)
            (log.warning if line.startswith("WARNING") else log.info)(line.removeprefix("WARNING: "))
        return futures

    @staticmethod
    def record_failure(outcome: DatasetOutcome, error: BaseException) -> None:
        """Mark a data set failed, keeping its one-line message."""
        outcome.status = "failed"
        outcome.error = str(error)
        outcome.error_type = type(error).__name__
        bad_input = isinstance(error, (InputError, ConfigError))
        log.error(
            "data set %s failed:%s", outcome.name, f" {error}" if bad_input else "\n" + "".join(traceback.format_exception(error))
        )


def raise_if_stop_requested(comm: Comm, where: str) -> None:
    """Collective check of the ranks' stop flags; every rank raises ``Interrupted`` together."""
    flag = comm.allreduce_sum(np.array([1.0 if stop_requested() else 0.0]))[0]
    if flag > 0:
        raise collective(Interrupted(f"stopped by a signal {where}; finished work was saved -- run the same command to resume"))


def is_complete(out: Path, fingerprint: str, method: str) -> bool:
    """True if ``out`` holds finished results of this config, data and method."""
    try:
        document = json.loads((out / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):  # no marker (FileNotFoundError), or a damaged one
        return False
    return document.get("fingerprint") == fingerprint and document.get("method") == method


def write_marker_after(temp_path: Path, futures: list, document: dict) -> None:
    """Writer thread: wait for a data set's result files, then write its completion marker."""
    wait_futures(futures)
    for future in futures:
        future.result()
    temp_path.write_text(json.dumps(document, indent=2))


def run_batch(cfg, comm: Comm, **options) -> int:
    """Fit every data set of ``cfg``; returns the exit code. ``options``: ``BatchRunner``'s keywords."""
    return BatchRunner(cfg, comm, **options).run()
