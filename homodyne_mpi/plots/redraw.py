"""``homodyne-mpi plot RESULT_DIR``: redraw every figure from the saved results, without refitting.

``RESULT_DIR`` is an output root or one data set folder. The pipeline's own functions draw, so the
figures come out identical; ``fit.h5`` is read one angle at a time, never whole in memory.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np

from ..errors import HomodyneError, InputError, check_path
from ..fit_matrices import matrix_frames_of
from ..io import AsyncWriter

log = logging.getLogger(__name__)

METHODS = ("nlsq", "cmc")
RERUN = "rerun `homodyne-mpi run` to write it again"
GIVE = "give the output folder of `homodyne-mpi run` or one data set folder in it"


def _has_results(folder: Path) -> bool:
    return any((folder / method / "result.json").is_file() for method in METHODS)


def find_dataset_dirs(result_dir: Path) -> list[Path]:
    """Data set folders under ``result_dir`` (itself, or its parent for a method folder); InputError if none."""
    root = Path(result_dir)
    missing = "no such folder -- give the output folder of `homodyne-mpi run` (its --output-dir) or one data set folder in it"
    check_path(root, InputError, missing, f"not a folder -- {GIVE}", folder=True)
    if root.name in METHODS and (root / "result.json").is_file():
        return [root.parent]
    if _has_results(root):
        return [root]
    found = sorted(child for child in root.iterdir() if child.is_dir() and _has_results(child))
    if not found:
        expected = "<data set>/nlsq/result.json or <data set>/cmc/result.json"
        raise InputError(f"{root}: no results found (expected {expected}) -- {GIVE}")
    return found


def read_result_json(path: Path) -> dict:
    """A ``result.json`` as a dict; a missing, unreadable or malformed file is an InputError."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing -- {RERUN}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable result file ({type(error).__name__}: {error}) -- {RERUN}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: holds a {type(document).__name__}, not a result mapping -- {RERUN}")
    return document


def _open_hdf5(path: Path) -> h5py.File:
    if not Path(path).is_file():
        raise InputError(f"{path}: missing -- {RERUN}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: not a readable HDF5 file ({error}) -- {RERUN}") from None


def read_hdf5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a (small) HDF5 file, by its full name (``a/b`` inside groups)."""
    arrays: dict[str, np.ndarray] = {}
    with _open_hdf5(path) as handle:
        try:
            handle.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        except (OSError, RuntimeError, KeyError) as error:
            raise InputError(f"{path}: cannot read its datasets ({error}) -- {RERUN}") from None
    return arrays


def _check_fit_file(path: Path, handle: h5py.File) -> None:
    """One-line InputError if ``fit.h5`` lacks what the NLSQ figures need or its shapes disagree."""
    if handle.attrs.get("fit_matrices") == "none" and "c2_exp" not in handle:
        return
    for key in ("c2_exp", "c2_fit"):
        if key not in handle or not isinstance(handle[key], h5py.Dataset):
            raise InputError(f"{path}: dataset '{key}' is missing -- {RERUN}")
    shape = handle["c2_exp"].shape
    if len(shape) != 3 or shape[1] != shape[2]:
        raise InputError(f"{path}: 'c2_exp' has shape {shape}, expected (n_angles, m, m) -- {RERUN}")
    if handle["c2_fit"].shape != shape:
        raise InputError(f"{path}: 'c2_fit' has shape {handle['c2_fit'].shape}, 'c2_exp' {shape} -- {RERUN}")
    if "phi" in handle and handle["phi"].shape != (shape[0],):
        raise InputError(f"{path}: 'phi' has shape {handle['phi'].shape}, expected ({shape[0]},) -- {RERUN}")
    frames = matrix_frames_of(handle)
    if frames is None or frames.shape != (shape[1],) or np.any(np.diff(frames) <= 0) or (frames.size and frames[0] < 0):
        raise InputError(f"{path}: 'matrix_frames' does not list the {shape[1]} increasing frames of the matrices -- {RERUN}")
    if "t" in handle and (handle["t"].ndim != 1 or (frames.size and frames[-1] >= handle["t"].shape[0])):
        raise InputError(f"{path}: 't' has shape {handle['t'].shape}, too short for frame {frames[-1]} -- {RERUN}")


def _load_dataset(files: ExitStack, folder: Path) -> tuple[Path, tuple | None, tuple | None]:
    """One data set folder's ``(folder, (nlsq_doc, fit.h5), (cmc_doc, posterior))``, read and checked;
    None for a method without results. ``fit.h5`` stays open in ``files``."""
    nlsq, cmc = None, None
    nlsq_dir, cmc_dir = folder / "nlsq", folder / "cmc"
    if (nlsq_dir / "result.json").is_file():
        nlsq_doc = read_result_json(nlsq_dir / "result.json")
        fit_path = nlsq_dir / "fit.h5"
        handle = files.enter_context(_open_hdf5(fit_path))
        _check_fit_file(fit_path, handle)
        if "phi" not in handle and not (nlsq_doc.get("data") or {}).get("phi"):
            raise InputError(f"{fit_path}: dataset 'phi' is missing and result.json has no data.phi -- {RERUN}")
        nlsq = (nlsq_doc, handle)
    if (cmc_dir / "result.json").is_file():
        posterior_path = cmc_dir / "posterior.h5"
        cmc = (read_result_json(cmc_dir / "result.json"), read_hdf5_arrays(posterior_path) if posterior_path.is_file() else {})
    return folder, nlsq, cmc


def redraw_results(result_dir: Path) -> int:
    """Redraw the figures of every data set under ``result_dir``; returns the exit code (0). Missing or
    corrupt result files raise InputError (exit code 2) before any figure is written; without
    matplotlib, a HomodyneError (exit code 1) names the extra to install."""
    from .backend import INSTALL, matplotlib_available
    from .cmc_figures import submit_cmc_figures
    from .nlsq_figures import submit_nlsq_figures

    if not matplotlib_available():
        raise HomodyneError(f"matplotlib is not installed, so no figures can be drawn -- {INSTALL}")
    folders = find_dataset_dirs(Path(result_dir))
    written: dict[Path, list[Path]] = {}
    # Everything is read and checked first; the writer finishes before the HDF5 files close.
    with ExitStack() as files:
        loaded = [_load_dataset(files, folder) for folder in folders]
        with AsyncWriter(max_workers=2) as writer:
            for folder, nlsq, cmc in loaded:
                written[folder] = submit_nlsq_figures(writer, folder, *nlsq) if nlsq else []
                if cmc:
                    written[folder] += submit_cmc_figures(writer, folder, *cmc, nlsq_doc=nlsq[0] if nlsq else None)
    for folder, paths in written.items():
        print(f"{folder}: wrote {len(paths)} figure(s)" + (f" in {paths[0].parent}" if paths else ""))
        for path in paths:
            print(f"  {path}")
    return 0
