"""Load -> distribute -> NLSQ -> CMC -> write, for each data set of a batch.

Every rank runs ``run_batch``; only rank 0 touches files. Rank 0 prefetches data set
``k+1`` in a background thread while all ranks fit data set ``k``, and hands results to
a background writer, so neither reading nor writing sits on the critical path. A data set
that fails (bad file, fit error) is recorded in ``batch_summary.json`` and the batch goes
on; the exit code says whether everything succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .data.loader import XPCSData, load_config_dataset
from .data.points import PointSet, upper_triangle_points
from .errors import ConfigError, HomodyneError, InputError, Interrupted
from .fingerprint import run_fingerprint
from .io import AsyncWriter, PrefetchLoader
from .nlsq import NLSQProblem, NLSQResult, build_problem, distribute_points, fit_nlsq
from .nlsq.checkpoint import LatestState, load_checkpoint, remove_checkpoint, save_checkpoint
from .nlsq.results import fit_arrays, result_document
from .parallel import Comm
from .parallel.signals import stop_requested

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

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "error_type": self.error_type,
            "paths": self.paths,
            "timing_s": self.timing_s,
        }


@dataclass
class PreparedDataset:
    """What rank 0 builds from a loaded data set before the fits start."""

    data: XPCSData
    problem: NLSQProblem
    points: PointSet


def prepare_dataset(cfg, dataset) -> PreparedDataset:
    """Rank 0, background thread: read the file, build the problem and its points."""
    data = load_config_dataset(cfg, dataset)
    problem = build_problem(cfg, data)
    points = upper_triangle_points(data.c2, problem.noise_sigma)
    return PreparedDataset(data, problem, points)


def write_fit_file(temp_path: Path, result: NLSQResult, problem: NLSQProblem, data: XPCSData, figures=None) -> None:
    """Writer thread: compute the fitted matrices and write ``nlsq/fit.h5`` at ``temp_path``.

    ``figures(arrays)``, when given, queues the figures drawn from the same arrays.
    """
    arrays = fit_arrays(result, problem, data)
    if figures is not None:
        figures(arrays)
    with h5py.File(temp_path, "w") as handle:
        for name, array in arrays.items():
            handle.create_dataset(name, data=np.asarray(array))
        handle.attrs["analysis_mode"] = problem.spec.mode
        handle.attrs["shear_form"] = problem.spec.shear_form
        handle.attrs["q"] = problem.spec.q
        handle.attrs["dt"] = problem.spec.dt


class BatchRunner:
    """Runs every data set of a config on every rank (rank 0 does all file I/O)."""

    def __init__(self, cfg, comm: Comm, *, method: str, output_dir: Path, nlsq_warm_start: bool = True, fresh: bool = False):
        if method not in METHODS:
            raise ConfigError(f"unknown method '{method}' -- choose one of {', '.join(METHODS)}")
        self.cfg = cfg
        self.comm = comm
        self.method = method
        self.output_dir = Path(output_dir)
        self.nlsq_warm_start = nlsq_warm_start
        self.fresh = fresh
        self.writer: AsyncWriter | None = None
        self.nlsq_documents: dict[Path, dict] = {}
        """Rank 0: each data set's NLSQ result document (reference lines in CMC figures)."""

    # -- the batch ------------------------------------------------------------------------

    def run(self) -> int:
        """Fit every data set; returns the exit code (0 all ok, 2 only bad input, 1 otherwise).

        A signal (SIGTERM/SIGUSR1) ends the batch with ``Interrupted`` after the finished
        work is saved; the same command then resumes.
        """
        datasets = self.comm.run_on_root(self.prepare_output)
        outcomes: list[DatasetOutcome] = []
        batch_start = time.perf_counter()
        loader = None
        if self.comm.is_root:
            self.writer = AsyncWriter(max_workers=2)
            loader = iter(PrefetchLoader(datasets, lambda entry: prepare_dataset(self.cfg, entry)))
            log.info("batch of %d data set(s), method %s, %d rank(s)", len(datasets), self.method, self.comm.size)
        try:
            for index, dataset in enumerate(datasets):
                raise_if_stop_requested(self.comm, "between data sets")
                record = next(loader) if loader is not None else None
                log.info("data set %d/%d: %s", index + 1, len(datasets), dataset.name)
                outcomes.append(self.run_dataset(dataset, record))
        except Interrupted:
            if self.comm.is_root:
                self.writer.wait_all()
                self.writer.shutdown()
            raise
        finally:
            if loader is not None:
                loader.close()
        return self.finish(outcomes, time.perf_counter() - batch_start)

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

    def finish(self, outcomes: list[DatasetOutcome], seconds: float) -> int:
        """Write ``batch_summary.json``, wait for every write, report failures."""
        code = 0
        if self.comm.is_root:
            failed = [o for o in outcomes if o.status == "failed"]
            summary = {
                "n_datasets": len(outcomes),
                "n_failed": len(failed),
                "method": self.method,
                "n_ranks": self.comm.size,
                "wall_s": seconds,
                "datasets": [o.to_dict() for o in outcomes],
            }
            self.writer.submit_json(self.output_dir / "batch_summary.json", summary)
            failures = self.writer.wait_all()
            self.writer.shutdown()
            for outcome in failed:
                print(f"error: data set '{outcome.name}': {outcome.error}", file=sys.stderr, flush=True)
            if failures:
                for failure in failures:
                    print(f"error: could not write {failure.describe()}", file=sys.stderr, flush=True)
                code = 1
            elif failed:
                input_only = all(o.error_type in ("InputError", "ConfigError") for o in failed)
                code = 2 if input_only else 1
            log.info("batch done in %.1f s: %d ok, %d failed", seconds, len(outcomes) - len(failed), len(failed))
        return int(self.comm.bcast(code))

    # -- one data set ---------------------------------------------------------------------

    def run_dataset(self, dataset, record) -> DatasetOutcome:
        """Fit one data set on every rank; rank 0 returns its outcome (others a stub)."""
        outcome = DatasetOutcome(name=dataset.name, source=str(dataset.file_path))
        out = self.output_dir / dataset.name
        status = None
        if self.comm.is_root:
            status = self.root_status(record, out, outcome)
        kind, payload, fingerprint, resume_state = self.comm.bcast(status if self.comm.is_root else None)
        if kind == "failed":
            if self.comm.is_root:
                self.record_failure(outcome, payload)
            return outcome
        if kind == "complete":
            outcome.status = "complete"
            log.info("data set %s: finished results of this config and data exist in %s; skipped (use --fresh to refit)", dataset.name, out)
            return outcome
        problem: NLSQProblem = payload
        prepared = record.value if self.comm.is_root else None
        start = time.perf_counter()
        local = distribute_points(
            prepared.points if prepared else None, problem.n_points, self.comm, self.cfg.optimization.nlsq.chunk_size
        )
        outcome.timing_s["distribute"] = time.perf_counter() - start
        nlsq_result = None
        futures = []
        if self.method in ("nlsq", "both") or self.nlsq_warm_start:
            latest = LatestState()
            try:
                nlsq_result = fit_nlsq(
                    problem, local, self.comm, self.cfg.optimization.nlsq, resume=resume_state, on_accept=latest.update
                )
            except Interrupted:
                state = latest if latest.theta is not None else resume_state
                if self.comm.is_root and state is not None:
                    save_checkpoint(out / "nlsq", state, problem.names, fingerprint)
                raise
            del local
            if self.comm.is_root:
                futures += self.write_nlsq(out, dataset.name, nlsq_result, problem, prepared.data, outcome)
        if self.method in ("cmc", "both"):
            futures += self.run_cmc_stage(out, problem, prepared, nlsq_result, outcome)
        if self.comm.is_root and outcome.status == "ok":
            marker = {"fingerprint": fingerprint, "method": self.method, "paths": outcome.paths}
            self.writer.submit_call(out / COMPLETE_MARKER, write_marker_after, futures, marker)
            remove_checkpoint(out / "nlsq")
        return outcome

    def root_status(self, record, out: Path, outcome: DatasetOutcome) -> tuple:
        """Rank 0: ``(kind, payload, fingerprint, resume theta)`` to broadcast for a data set."""
        if not record.ok:
            return ("failed", record.error, None, None)
        prepared = record.value
        outcome.timing_s["load"] = record.load_s
        problem = prepared.problem
        fingerprint = run_fingerprint(self.cfg.to_dict(), prepared.data.source, problem.n_points, problem.names)
        if self.fresh:
            remove_checkpoint(out / "nlsq")
            shutil.rmtree(out / "cmc" / "shards", ignore_errors=True)
            (out / COMPLETE_MARKER).unlink(missing_ok=True)
        elif is_complete(out, fingerprint, self.method):
            return ("complete", None, fingerprint, None)
        resume = None if self.fresh else load_checkpoint(out / "nlsq", problem.names, fingerprint)
        return ("ok", problem, fingerprint, resume)

    def run_cmc_stage(self, out: Path, problem, prepared, nlsq_result, outcome: DatasetOutcome) -> list:
        """CMC on every rank; rank 0 writes its result (a too-few-shards error is recorded)."""
        from .cmc import run_cmc

        start = time.perf_counter()
        calibration = likelihood_calibration(nlsq_result, problem) if self.cfg.optimization.cmc.calibrate else 1.0
        if calibration > 1.0:
            log.info("CMC likelihood tempered by %.3g (NLSQ jackknife / model variance, t-widened)", calibration)
        try:
            cmc_result = run_cmc(
                self.cfg,
                problem,
                prepared.points if prepared else None,
                self.comm,
                warm_start=nlsq_result if self.nlsq_warm_start else None,
                output_dir=out if self.comm.is_root else None,
                calibration=calibration,
            )
        except Interrupted:
            raise
        except HomodyneError as error:
            if self.comm.is_root:
                self.record_failure(outcome, error)
            return []
        outcome.timing_s["cmc"] = time.perf_counter() - start
        futures = []
        if self.comm.is_root and cmc_result is not None:
            document = cmc_result.to_json_dict()
            document.setdefault("timing_s", {})
            posterior = cmc_result.posterior_arrays()
            futures.append(self.writer.submit_json(out / "cmc" / "result.json", document))
            futures.append(self.writer.submit_hdf5(out / "cmc" / "posterior.h5", posterior))
            if self.cfg.output.plots:
                from .plots import submit_cmc_figures

                submit_cmc_figures(self.writer, out, document, posterior, nlsq_doc=self.nlsq_documents.get(out))
            outcome.paths["cmc_result"] = str(out / "cmc" / "result.json")
            outcome.paths["cmc_posterior"] = str(out / "cmc" / "posterior.h5")
        return futures

    def write_nlsq(self, out: Path, name: str, result: NLSQResult, problem, data: XPCSData, outcome: DatasetOutcome) -> list:
        """Rank 0: queue ``nlsq/result.json`` and ``nlsq/fit.h5`` on the background writer.

        Returns the futures of the writes.
        """
        start = time.perf_counter()
        timing = {"load": outcome.timing_s.get("load", 0.0), **result.timing_s}
        document = result_document(result, problem, self.cfg, data, dataset=name, timing_s=timing)
        figures = None
        if self.cfg.output.plots:
            from .plots import submit_nlsq_figures

            def figures(arrays, document=document):
                submit_nlsq_figures(self.writer, out, document, arrays)

        futures = [self.writer.submit_call(out / "nlsq" / "fit.h5", write_fit_file, result, problem, data, figures)]
        document["timing_s"]["write"] = time.perf_counter() - start
        futures.append(self.writer.submit_json(out / "nlsq" / "result.json", document))
        self.nlsq_documents[out] = document
        outcome.timing_s.update({f"nlsq_{k}": v for k, v in result.timing_s.items()})
        outcome.paths["nlsq_result"] = str(out / "nlsq" / "result.json")
        outcome.paths["nlsq_fit"] = str(out / "nlsq" / "fit.h5")
        self.log_nlsq(result)
        return futures

    @staticmethod
    def log_nlsq(result: NLSQResult) -> None:
        """Rank 0: the fitted values in the log."""
        state = "converged" if result.converged else "NOT converged"
        log.info("NLSQ %s after %d iterations (%s); reduced chi2 %.4f", state, result.iterations, result.reason, result.reduced_chi2)
        for name, value, std in zip(result.names, result.theta, result.std):
            log.info("  %-20s %14.6g +- %.3g", name, value, std)

    @staticmethod
    def record_failure(outcome: DatasetOutcome, error: BaseException) -> None:
        """Mark a data set failed, keeping its one-line message."""
        outcome.status = "failed"
        outcome.error = str(error)
        outcome.error_type = type(error).__name__
        if not isinstance(error, (InputError, ConfigError)):
            log.error("data set %s failed:\n%s", outcome.name, "".join(traceback.format_exception(error)))
        else:
            log.error("data set %s failed: %s", outcome.name, error)


def likelihood_calibration(nlsq_result: NLSQResult | None, problem: NLSQProblem) -> float:
    """The factor the CMC log-likelihood is divided by (``cmc.calibration.tempering_factor``).

    From the free physical parameters' jackknife-to-model variance ratios, each widened
    by Student's t at the jackknife's effective degrees of freedom; 1 without a jackknife.
    """
    from .cmc.calibration import tempering_factor

    if nlsq_result is None or nlsq_result.jackknife is None:
        return 1.0
    physical = np.zeros(len(problem.free), dtype=bool)
    physical[problem.layout.physical_slice] = True
    jackknife = nlsq_result.jackknife
    return tempering_factor(jackknife.std, nlsq_result.std, jackknife.effective_dof, physical & problem.free)


def raise_if_stop_requested(comm: Comm, where: str) -> None:
    """Collective check of the ranks' stop flags; every rank raises ``Interrupted`` together."""
    flag = comm.allreduce_sum(np.array([1.0 if stop_requested() else 0.0]))[0]
    if flag > 0:
        error = Interrupted(f"stopped by a signal {where}; finished work was saved -- run the same command to resume")
        error.collective = True
        raise error


def is_complete(out: Path, fingerprint: str, method: str) -> bool:
    """True if ``out`` holds finished results of this config, data and method."""
    marker = out / COMPLETE_MARKER
    if not marker.exists():
        return False
    try:
        document = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return document.get("fingerprint") == fingerprint and document.get("method") == method


def write_marker_after(temp_path: Path, futures: list, document: dict) -> None:
    """Writer thread: wait for a data set's result files, then write its completion marker."""
    wait_futures(futures)
    for future in futures:
        future.result()
    temp_path.write_text(json.dumps(document, indent=2))


def run_batch(cfg, comm: Comm, *, method: str, output_dir: Path, nlsq_warm_start: bool = True, fresh: bool = False) -> int:
    """Fit every data set of ``cfg``; returns the exit code (same on every rank)."""
    runner = BatchRunner(cfg, comm, method=method, output_dir=output_dir, nlsq_warm_start=nlsq_warm_start, fresh=fresh)
    return runner.run()
