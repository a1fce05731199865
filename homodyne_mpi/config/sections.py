"""The config sections that describe the data, the parameters and the output.

One dataclass per YAML section, keyword-only, a docstring per field (``init-config`` writes them as comments, the
defaults as values); ``option(...)`` holds the checks of one value, ``_check`` the rules between the fields of a
section. Angles in degrees, times in seconds, lengths in Angstrom, q in 1/Angstrom.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..vocabulary import FIT_MATRIX_MODES, SCALING_MODES
from .context import Context, join, option, suggest_fix

SCALING_PARAMETERS = ("contrast", "offset")
DEFAULT_BOUNDS = {"D0": (1e2, 1e5), "alpha": (-2.0, 2.0), "D_offset": (-1e4, 1e4),
                  "gamma_dot_t0": (1e-6, 0.5), "beta": (-2.0, 2.0), "gamma_dot_t_offset": (-0.1, 0.1), "phi0": (-10.0, 10.0),
                  "contrast": (0.0, 1.0), "offset": (0.5, 1.5)}  # fmt: skip
"""Bounds of a parameter that ``parameter_space.bounds`` does not list, in its unit."""
PRIOR_TYPES = ("TruncatedNormal", "Normal", "Uniform")


@dataclass(kw_only=True)
class ScatteringConfig:
    """Scattering vector."""

    wavevector_q: float | None = option(gt=0, unit="1/Angstrom", example="0.0054")
    """Wavevector magnitude q; the file's q bin nearest to it is analysed (null: the first q the file stores)."""


@dataclass(kw_only=True)
class GeometryConfig:
    """Shear-cell geometry."""

    stator_rotor_gap: float = option(2.0e6, gt=0, unit="Angstrom")
    """Stator-rotor gap h of the shear cell (200 micrometres = 2.0e6); laminar_flow only."""


@dataclass(kw_only=True)
class AnalyzerConfig:
    """Time grid and scattering geometry."""

    dt: float | None = option(None, gt=0, unit="s", auto=True, example="0.1' or 'dt: auto")
    """Seconds per frame; auto reads frame_time * stride_frame * avg_frame from the HDF5 file."""
    start_frame: int = option(1, ge=1)
    """First frame fitted, 1-based, inclusive."""
    end_frame: int | None = option(None, ge=1, example="1000' or 'end_frame: null")
    """Last frame fitted, 1-based, inclusive, >= start_frame; null: the file's last frame."""
    scattering: ScatteringConfig = option()
    geometry: GeometryConfig = option(factory=GeometryConfig)

    def _check(self, ctx: Context, path: str) -> None:
        if self.end_frame is not None and self.end_frame < self.start_frame:
            raise ctx.error(
                f"'{join(path, 'end_frame')}' = {self.end_frame} is before start_frame = {self.start_frame}",
                "set end_frame >= start_frame (both 1-based, inclusive) or null for the last frame",
            )


@dataclass(kw_only=True)
class DatasetConfig:
    """One entry of ``experimental_data.datasets``."""

    file_path: str = option(nonempty="give the HDF5 file's path")
    """HDF5 file; relative paths are read from the config file's folder."""
    name: str | None = None
    """Results folder under output_dir; null: the file's name without extension."""
    wavevector_q: list[float] | None = option(None, gt=0, unit="1/Angstrom", one_or_list=True)
    """One q or a list of q, one dataset each, named NAME_qVALUE; null: the analyzer's q."""

    def _check(self, ctx: Context, path: str) -> None:
        name = self.name
        if name is not None and (not name.strip() or name in (".", "..") or "/" in name or "\\" in name):
            raise ctx.error(
                f"'{join(path, 'name')}' = {name!r} cannot name a results folder", "use a plain name without '/' (e.g. sample_A)"
            )
        if self.wavevector_q is not None and not self.wavevector_q:
            raise ctx.error(
                f"'{join(path, 'wavevector_q')}' is an empty list",
                "give one or more q values (1/Angstrom) or null for the analyzer's q",
            )


@dataclass(kw_only=True)
class ExperimentalDataConfig:
    """Which files to fit."""

    file_path: str | None = option(None, example="./data/experiment.hdf", nonempty="give the HDF5 file's path or null")
    """APS 8-ID-I two-time HDF5 file (APS-U or legacy layout, detected from its keys);
    relative paths are read from this file's folder; null when ``datasets`` is used."""
    datasets: list[DatasetConfig] = option(factory=list)
    """Several datasets in one run (then file_path must be null), for example
    ``- {file_path: ./data/B.hdf, wavevector_q: [0.0054, 0.0071]}``."""

    def _check(self, ctx: Context, path: str) -> None:
        if self.file_path is not None and self.datasets:
            raise ctx.error(
                f"both '{join(path, 'file_path')}' and '{join(path, 'datasets')}' are set",
                "keep one: file_path for a single file, datasets for several",
            )
        names = [d.name for d in self.datasets if d.name is not None]
        repeated = [name for name in names if names.count(name) > 1]
        if repeated:
            raise ctx.error(
                f"dataset name '{repeated[0]}' appears twice in '{join(path, 'datasets')}'",
                "give every dataset its own name (it names the results folder)",
            )

    def resolved_datasets(
        self, base_dir: str | os.PathLike[str] | None = None, *, source: str | None = None
    ) -> list[DatasetConfig]:
        """The datasets to fit (``datasets``, else ``file_path``) with absolute paths (relative ones from ``base_dir``, the
        config file's folder, else the working directory), a name (default: the file's stem) and one q each (several q make
        one entry per q, named ``{name}_q{q}``; ``wavevector_q`` ``None``: the analyzer's q)."""
        ctx = Context(source)
        if not self.datasets and self.file_path is None:
            raise ctx.error(
                "no data: 'experimental_data.file_path' is null and 'experimental_data.datasets' is empty",
                "set experimental_data.file_path to the HDF5 file",
            )
        entries = self.datasets or [DatasetConfig(file_path=str(self.file_path))]
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        resolved: list[DatasetConfig] = []
        for entry in entries:
            absolute = os.path.abspath(base / Path(entry.file_path).expanduser())  # an absolute path replaces base
            name = entry.name if entry.name is not None else Path(absolute).stem
            qs = entry.wavevector_q
            if qs is None or len(qs) == 1:
                resolved.append(DatasetConfig(file_path=absolute, name=name, wavevector_q=None if qs is None else list(qs)))
            else:
                resolved += [DatasetConfig(file_path=absolute, name=f"{name}_q{q:g}", wavevector_q=[q]) for q in qs]
        names = [entry.name for entry in resolved]
        repeated = [name for i, name in enumerate(names) if name in names[:i]]
        if repeated:
            raise ctx.error(
                f"two datasets resolve to the name '{repeated[0]}' in 'experimental_data.datasets'",
                "give them distinct 'name' values (each names a results folder)",
            )
        return resolved


@dataclass(kw_only=True)
class AngleRange:
    """One entry of ``phi_filtering.target_ranges``: an inclusive range of phi."""

    min_angle: float = option(ge=-360, le=360, unit="degrees")
    """Lower end."""
    max_angle: float = option(ge=-360, le=360, unit="degrees")
    """Upper end; min_angle > max_angle wraps through 180 (170 .. -170 is 170 .. 190)."""


@dataclass(kw_only=True)
class PhiFilteringConfig:
    """Which azimuthal angles to fit."""

    enabled: bool = False
    """true: fit only the angles inside target_ranges; false: fit every angle in the file."""
    target_ranges: list[AngleRange] = option(factory=list)
    """Inclusive ranges of the azimuthal angle phi; angles compare modulo 360."""

    def _check(self, ctx: Context, path: str) -> None:
        if self.enabled and not self.target_ranges:
            raise ctx.error(
                f"'{join(path, 'enabled')}' is true but '{join(path, 'target_ranges')}' is empty",
                "add ranges such as - {min_angle: -10, max_angle: 10}, or set enabled: false",
            )


@dataclass(kw_only=True)
class PerAngleScalingConfig:
    """Per-angle contrast and offset: ``c2 = offset + contrast * g1^2`` for each angle."""

    mode: str = option("individual", choices=SCALING_MODES)
    """How contrast and offset are treated:
    - individual: one contrast and one offset per angle, fitted (recommended: contrast differs between angle sectors)
    - averaged: one contrast and one offset shared by all angles, fitted
    - fixed: contrast and offset below, not fitted"""
    contrast: float | list[float] = option(0.5, gt=0, le=1)
    """Starting (or fixed) contrast: one number for every angle, or one per selected angle."""
    offset: float | list[float] = option(1.0, gt=0)
    """Starting (or fixed) offset (baseline, near 1): one number, or one per selected angle."""

    def scaling_arrays(self, n_angles: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-angle (contrast, offset) arrays for ``n_angles`` angles: a single value repeated, or a list of ``n_angles``."""
        out = []
        for name in SCALING_PARAMETERS:
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != n_angles:
                raise Context(None).error(
                    f"'initial_parameters.per_angle_scaling.{name}' has {len(value)} values but {n_angles} angles are selected",
                    "give one value, or one per selected angle",
                )
            out.append(np.asarray(value, dtype=float) if isinstance(value, list) else np.full(n_angles, float(value)))
        return out[0], out[1]

    def _check(self, ctx: Context, path: str) -> None:
        lengths = {name: len(value) for name in SCALING_PARAMETERS if isinstance(value := getattr(self, name), list)}
        for name, length in lengths.items():
            if not length:
                raise ctx.error(f"'{join(path, name)}' is an empty list", "give one value, or one per selected angle")
        if len(lengths) == 2 and lengths["contrast"] != lengths["offset"]:
            raise ctx.error(
                f"'{join(path, 'contrast')}' has {lengths['contrast']} values but "
                f"'{join(path, 'offset')}' has {lengths['offset']}",
                "give both one value per selected angle (or a single value each)",
            )


@dataclass(kw_only=True)
class InitialParametersConfig:
    """Starting values (and the truth that ``homodyne-mpi simulate`` uses)."""

    parameter_names: list[str] = option(factory=list)
    """Physical parameters in the order of ``values``; empty: the mode's canonical list (static: D0, alpha, D_offset;
    laminar_flow: those and gamma_dot_t0, beta, gamma_dot_t_offset, phi0)."""
    values: list[float] | None = None
    """Starting values, one per name, each inside its bounds; null: the middle of each bound."""
    fixed_parameters: list[str] = option(factory=list)
    """Names from parameter_names held at their value during NLSQ and CMC."""
    per_angle_scaling: PerAngleScalingConfig = option(factory=PerAngleScalingConfig)
    """Per-angle contrast and offset."""


@dataclass(kw_only=True)
class ParameterBound:
    """One entry of ``parameter_space.bounds``."""

    name: str = option()
    """Parameter name: a physical name, contrast or offset."""
    min: float = option()
    """Lower bound, inclusive, in the parameter's unit."""
    max: float = option()
    """Upper bound, inclusive, in the parameter's unit (min < max)."""
    prior_mu: float | None = None
    """Prior mean for CMC; null: left to optimization.cmc.prior."""
    prior_sigma: float | None = option(None, gt=0)
    """Prior width for CMC, > 0; null: left to optimization.cmc.prior."""
    type: str = option("TruncatedNormal", choices=PRIOR_TYPES)
    """Prior family, kept inside [min, max]."""


@dataclass(kw_only=True)
class ParameterSpaceConfig:
    """Bounds and CMC priors; a parameter not listed gets its default bounds."""

    bounds: list[ParameterBound] = option(factory=list)
    """Bounds of the listed parameters."""

    def bound(self, name: str) -> ParameterBound:
        """The listed bound of ``name``, or its default (``KeyError`` for an unknown name)."""
        listed = [entry for entry in self.bounds if entry.name == name]
        return listed[0] if listed else ParameterBound(name=name, min=DEFAULT_BOUNDS[name][0], max=DEFAULT_BOUNDS[name][1])

    def bounds_for(self, name: str) -> tuple[float, float]:
        """``(min, max)`` of ``name``: the listed bound or the default (``DEFAULT_BOUNDS``)."""
        entry = self.bound(name)
        return float(entry.min), float(entry.max)

    def _check(self, ctx: Context, path: str) -> None:
        seen: set[str] = set()
        for i, entry in enumerate(self.bounds):
            item = f"{join(path, 'bounds')}[{i}]"
            if entry.name not in DEFAULT_BOUNDS:
                raise ctx.error(
                    f"unknown parameter '{entry.name}' in '{item}.name'", suggest_fix(entry.name, list(DEFAULT_BOUNDS))
                )
            if entry.name in seen:
                raise ctx.error(f"parameter '{entry.name}' has two entries in '{join(path, 'bounds')}'", "keep one")
            seen.add(entry.name)
            if not entry.min < entry.max:
                raise ctx.error(
                    f"'{item}' ({entry.name}) has min = {entry.min!r} >= max = {entry.max!r}",
                    "make min smaller than max",
                )


@dataclass(kw_only=True)
class OutputConfig:
    """Where results go."""

    output_dir: str = option("./homodyne_results", nonempty="give a folder, e.g. ./homodyne_results")
    """Results root (relative to the working directory): one folder per dataset with
    nlsq/ and cmc/ inside; ``run --output-dir`` overrides it."""
    plots: bool = True
    """Write PNG plots (measured vs fitted c2, residuals, posterior marginals)."""
    fit_matrices: str = option("auto", choices=FIT_MATRIX_MODES)
    """Which N x N matrices per angle nlsq/fit.h5 keeps (c2_exp, c2_fit, residual; 8 bytes per entry):
    - auto: every frame up to fit_matrix_max_frames frames, else every k-th frame, k = ceil(N / fit_matrix_max_frames) (at
      most fit_matrix_max_frames^2 entries per angle and matrix)
    - full: every frame (3 x 8 N^2 bytes per angle)
    - none: no matrices (parameters, covariance and bands only; no c2 figures)"""
    fit_matrix_max_frames: int = option(1000, ge=2)
    """Largest matrix side, in frames, that fit_matrices: auto keeps whole."""


@dataclass(kw_only=True)
class ComputeConfig:
    """Compilation cache and rank groups."""

    compilation_cache_dir: str | None = option(
        "~/.cache/homodyne_mpi/jax", nonempty="give a folder, or null to disable the cache"
    )
    """JAX persistent compilation cache folder (reused across runs); null disables it."""
    rank_group_size: int | None = option(None, ge=1, auto=True, example="4' or 'rank_group_size: auto")
    """Ranks per group in a batch: groups fit different data sets at once (auto/null: from the data set sizes; run --group-size overrides)."""
    stream_points: bool | None = option(None, auto=True, example="true' or 'stream_points: auto")
    """Rank 0 reads the matrices in row blocks and sends each rank only its points, so no rank holds the whole data set (true/false; auto/null: above 2e7 points). --method nlsq only: CMC loads the data set whole."""
