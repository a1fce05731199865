"""Typed configuration: YAML in, validated dataclasses out, and back to YAML.

One dataclass per YAML section (keyword-only constructors, a docstring per field).
``load_config(path)`` reads a file, ``HomodyneConfig.from_dict`` parses a mapping,
``validate()`` checks values, ``to_dict()``/``dump_config()`` write every field back
(defaults filled in) so that ``from_dict(cfg.to_dict()) == cfg``. Every problem is a
:class:`~homodyne_mpi.errors.ConfigError` whose message is one line: the file, the dotted
key and the fix (exit code 2 in the CLI).

Parsing is generic: each field's type hint drives the conversion (``_coerce``) and its
metadata (``_opt(ge=..., choices=...)``) the range check; the few rules that tie fields
together live in each section's ``_check`` method.

Types. Numbers may be written ``1e5``: the loader reads YAML 1.2 style exponents that
PyYAML would leave as strings, and number fields also accept numeric strings. Integer
fields accept integral floats (``1e5`` -> 100000) and reject others (``2.5``). Booleans
must be ``true``/``false``. ``null`` for a field with a default means that default.
Angles are in degrees, times in seconds, lengths in Angstrom, q in 1/Angstrom.

Compatibility with the reference package (public ``homodyne`` v2.x, DESIGN section 4).
Its configs load as they are. Keys of the sections this program owns are checked
strictly: a key neither program knows is an error that names the nearest valid spelling.
Reference keys with an equivalent here are mapped; reference keys without one are
collected in ``HomodyneConfig.ignored_keys`` and logged once (INFO) per load.

Mapped (reference -> here):

- ``analysis_mode: static_isotropic | static_anisotropic`` -> ``static``; a missing
  ``analysis_mode`` is taken from ``analysis_settings.static_mode`` (true -> static).
- parameter names ``gamma_dot_0``/``gamma_dot_t_0`` -> ``gamma_dot_t0``,
  ``gamma_dot_offset`` -> ``gamma_dot_t_offset``, ``phi_0`` -> ``phi0`` (in
  ``parameter_names``, ``fixed_parameters``, ``active_parameters`` and bound names).
- ``experimental_data.data_folder_path`` + ``data_file_name`` -> ``file_path`` when
  ``file_path`` is not given (otherwise ignored, as the reference does).
- ``initial_parameters.fixed_parameters`` as a mapping ``{name: value}`` -> the names
  go to ``fixed_parameters``, the values into ``values``; ``active_parameters`` (the
  names to fit) -> every other name of ``parameter_names`` is fixed.
- ``optimization.nlsq.anti_degeneracy.per_angle_mode`` and
  ``optimization.cmc.per_angle_mode`` -> ``initial_parameters.per_angle_scaling.mode``
  (ours wins; nlsq's wins over cmc's): ``auto`` -> individual (said once, INFO),
  ``individual`` -> individual, ``averaged``/``constant_averaged`` -> averaged,
  ``constant`` -> fixed when ``per_angle_scaling`` gives contrast and offset, else
  individual (WARNING), ``fourier`` -> individual (WARNING).
- ``optimization.method: mcmc`` -> ``cmc``.
- ``optimization.nlsq.tolerance`` -> ``ftol`` (the reference uses it as ftol);
  ``loss: arctan`` -> ``cauchy`` (WARNING; both are bounded robust losses).
- ``optimization.mcmc`` (the reference's base sampler block; some versions put the CMC
  blocks there): its ``sharding``, ``combination``, ``per_shard_mcmc`` and ``validation``
  merge into ``optimization.cmc`` (keys under ``cmc`` win); its ``num_warmup``,
  ``num_samples``, ``num_chains``, ``target_accept_prob``, ``max_tree_depth`` (v2.1:
  ``max_treedepth``) fill the
  ``cmc.per_shard_mcmc`` keys not given there (per-shard settings win, as the
  reference's templates say).
- ``optimization.cmc.combination_method`` and ``cmc.min_success_rate`` ->
  ``cmc.combination.method`` / ``min_success_rate``; ``cmc.validation.max_per_shard_rhat``
  -> ``combination.max_rhat``; ``cmc.validation.max_divergence_rate`` and
  ``min_success_rate`` -> ``combination`` (when not given there).
  Combination methods: ``auto`` -> robust_consensus_mc, ``weighted_gaussian`` ->
  gaussian_product, ``simple_average`` -> consensus_mc (WARNING).
- ``optimization.cmc.sharding.min_points_per_param`` -> ``min_points_per_parameter``,
  ``sharding_strategy`` -> ``strategy``; strategy ``contiguous`` -> stratified (WARNING:
  every shard must hold every angle).
- ``output.directory`` -> ``output.output_dir``; ``plotting.save_plots`` ->
  ``output.plots``.

Ignored (listed in ``ignored_keys``): the top-level sections ``metadata``,
``analysis_settings``, ``noise_estimation``, ``performance``, ``logging``,
``quality_control``, ``validation``, ``config_version`` and the rest of ``plotting``;
and the keys in ``_REFERENCE_ONLY`` below (phi-angle files, caches, the reference's
optimizer knobs such as ``trust_region_scale``, ``x_scale_map``, ``anti_degeneracy``
layers, ``stratification``, ``streaming``, CMC backends, timeouts, checkpoints and
validation thresholds we do not use, output formats, ``units``, ``description``).
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import numbers
import operator
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import ConfigError
from .vocabulary import ANALYSIS_MODES, PHYSICAL_PARAMETERS, SCALING_MODES, SHEAR_FORMS

logger = logging.getLogger("homodyne_mpi.config")

__all__ = [
    "ANALYSIS_MODES",
    "DEFAULT_BOUNDS",
    "PARAMETER_ALIASES",
    "PARAMETER_UNITS",
    "PHYSICAL_PARAMETERS",
    "SCALING_MODES",
    "SCALING_PARAMETERS",
    "SHEAR_FORMS",
    "AnalyzerConfig",
    "AngleRange",
    "CMCConfig",
    "CombinationConfig",
    "ComputeConfig",
    "DatasetConfig",
    "ExperimentalDataConfig",
    "GeometryConfig",
    "HomodyneConfig",
    "InitialParametersConfig",
    "NLSQConfig",
    "OptimizationConfig",
    "OutputConfig",
    "ParameterBound",
    "ParameterSpaceConfig",
    "PerAngleScalingConfig",
    "PerShardMCMCConfig",
    "PhiFilteringConfig",
    "PriorConfig",
    "ScatteringConfig",
    "ShardingConfig",
    "dump_config",
    "load_config",
    "render_template",
]

SCALING_PARAMETERS = ("contrast", "offset")
DEFAULT_BOUNDS = {
    "D0": (1e2, 1e5),
    "alpha": (-2.0, 2.0),
    "D_offset": (-1e4, 1e4),
    "gamma_dot_t0": (1e-6, 0.5),
    "beta": (-2.0, 2.0),
    "gamma_dot_t_offset": (-0.1, 0.1),
    "phi0": (-10.0, 10.0),
    "contrast": (0.0, 1.0),
    "offset": (0.5, 1.5),
}
PARAMETER_UNITS = {
    "D0": "Angstrom^2 s^-(1+alpha)",
    "alpha": "dimensionless",
    "D_offset": "Angstrom^2/s",
    "gamma_dot_t0": "s^-(1+beta)",
    "beta": "dimensionless",
    "gamma_dot_t_offset": "1/s",
    "phi0": "degrees",
    "contrast": "dimensionless",
    "offset": "dimensionless",
}
PARAMETER_ALIASES = {
    "gamma_dot_0": "gamma_dot_t0",
    "gamma_dot_t_0": "gamma_dot_t0",
    "gamma_dot_offset": "gamma_dot_t_offset",
    "phi_0": "phi0",
}
PRIOR_TYPES = ("TruncatedNormal", "Normal", "Uniform")
NLSQ_LOSSES = ("linear", "soft_l1", "huber", "cauchy")


def _opt(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    choices: tuple[str, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    unit: str = "",
    auto: bool = False,
    one_or_list: bool = False,
    example: str | None = None,
) -> Any:
    """A dataclass field with the checks the generic parser and validator apply.

    ``choices``: allowed strings; ``gt``/``ge``/``lt``/``le``: range of a number (and of
    each number of a list); ``auto``: the YAML string ``'auto'`` is accepted (it becomes
    ``None`` for an optional number, stays ``'auto'`` for an ``int | str`` field);
    ``one_or_list``: a single value is read as a one-element list; ``example``: a
    value shown in type errors when the default cannot serve as one.
    """
    given = dict(choices=choices, gt=gt, ge=ge, lt=lt, le=le, unit=unit or None, auto=auto or None)
    given["one_or_list"] = one_or_list or None
    given["example"] = example
    meta = {key: value for key, value in given.items() if value is not None}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ScatteringConfig:
    """``analyzer_parameters.scattering``."""

    wavevector_q: float = _opt(gt=0, unit="1/Angstrom", example="0.0054")
    """Wavevector magnitude q, 1/Angstrom; the file's q bin nearest to it is analysed."""


@dataclass(kw_only=True)
class GeometryConfig:
    """``analyzer_parameters.geometry``."""

    stator_rotor_gap: float = _opt(2.0e6, gt=0, unit="Angstrom")
    """Stator-rotor gap h of the shear cell, Angstrom (laminar flow only)."""


@dataclass(kw_only=True)
class AnalyzerConfig:
    """``analyzer_parameters``: time grid and scattering geometry."""

    dt: float | None = _opt(None, gt=0, unit="s", auto=True, example="0.1' or 'dt: auto")
    """Seconds per frame; ``None`` (YAML ``auto``) reads it from the HDF5 file."""
    start_frame: int = _opt(1, ge=1)
    """First frame fitted, 1-based, inclusive."""
    end_frame: int | None = _opt(None, ge=1, example="1000' or 'end_frame: null")
    """Last frame fitted, 1-based, inclusive; ``None`` is the file's last frame."""
    scattering: ScatteringConfig = _opt()
    """Wavevector."""
    geometry: GeometryConfig = _opt(factory=GeometryConfig)
    """Shear-cell geometry."""

    def _check(self, ctx: _Context, path: str) -> None:
        if self.end_frame is not None and self.end_frame < self.start_frame:
            raise ctx.error(
                f"'{_join(path, 'end_frame')}' = {self.end_frame} is before start_frame = {self.start_frame}",
                "set end_frame >= start_frame (both 1-based, inclusive) or null for the last frame",
            )


@dataclass(kw_only=True)
class DatasetConfig:
    """One entry of ``experimental_data.datasets``."""

    file_path: str = _opt()
    """HDF5 file; relative paths are read from the config file's folder."""
    name: str | None = None
    """Results folder name under ``output_dir``; ``None``: the file's stem."""
    wavevector_q: list[float] | None = _opt(None, gt=0, unit="1/Angstrom", one_or_list=True)
    """q values (1/Angstrom) to analyse, one dataset each; ``None``: the analyzer's q."""

    def _check(self, ctx: _Context, path: str) -> None:
        if not self.file_path.strip():
            raise ctx.error(f"'{_join(path, 'file_path')}' is empty", "give the HDF5 file's path")
        if self.name is not None:
            _check_dataset_name(self.name, _join(path, "name"), ctx)
        if self.wavevector_q is not None and not self.wavevector_q:
            raise ctx.error(
                f"'{_join(path, 'wavevector_q')}' is an empty list",
                "give one or more q values (1/Angstrom) or null for the analyzer's q",
            )


@dataclass(kw_only=True)
class ExperimentalDataConfig:
    """``experimental_data``: which files to fit."""

    file_path: str | None = _opt(None, example="./data/experiment.hdf")
    """One HDF5 file; relative paths are read from the config file's folder."""
    datasets: list[DatasetConfig] = _opt(factory=list)
    """Several datasets in one run; when given, ``file_path`` must be null."""

    def _check(self, ctx: _Context, path: str) -> None:
        if self.file_path is not None and not self.file_path.strip():
            raise ctx.error(f"'{_join(path, 'file_path')}' is empty", "give the HDF5 file's path or null")
        if self.file_path is not None and self.datasets:
            raise ctx.error(
                f"both '{_join(path, 'file_path')}' and '{_join(path, 'datasets')}' are set",
                "keep one: file_path for a single file, datasets for several",
            )
        names = [d.name for d in self.datasets if d.name is not None]
        for name in names:
            if names.count(name) > 1:
                raise ctx.error(
                    f"dataset name '{name}' appears twice in '{_join(path, 'datasets')}'",
                    "give every dataset its own name (it names the results folder)",
                )

    def resolved_datasets(
        self, base_dir: str | os.PathLike[str] | None = None, *, source: str | None = None
    ) -> list[DatasetConfig]:
        """The datasets to fit, with absolute paths, names and one q each (or ``None``).

        ``datasets`` if given, else one built from ``file_path``. Relative paths are
        resolved against ``base_dir`` (the config file's folder; the working directory
        when ``None``). A dataset's name defaults to the file's stem; a dataset with
        several q values becomes one entry per q named ``{name}_q{q}``. A ``None``
        ``wavevector_q`` means "use ``analyzer_parameters.scattering.wavevector_q``".
        """
        ctx = _Context(source)
        entries = list(self.datasets)
        if not entries:
            if self.file_path is None:
                raise ctx.error(
                    "no data: 'experimental_data.file_path' is null and 'experimental_data.datasets' is empty",
                    "set experimental_data.file_path to the HDF5 file",
                )
            entries = [DatasetConfig(file_path=self.file_path)]
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        resolved: list[DatasetConfig] = []
        for entry in entries:
            file_path = Path(entry.file_path).expanduser()
            if not file_path.is_absolute():
                file_path = base / file_path
            absolute = os.path.abspath(file_path)
            name = entry.name if entry.name is not None else Path(absolute).stem
            qs = entry.wavevector_q
            if qs is None:
                resolved.append(DatasetConfig(file_path=absolute, name=name, wavevector_q=None))
            elif len(qs) == 1:
                resolved.append(DatasetConfig(file_path=absolute, name=name, wavevector_q=[qs[0]]))
            else:
                for q in qs:
                    resolved.append(
                        DatasetConfig(file_path=absolute, name=f"{name}_q{q:g}", wavevector_q=[q])
                    )
        seen: set[str] = set()
        for entry in resolved:
            if entry.name in seen:
                raise ctx.error(
                    f"two datasets resolve to the name '{entry.name}' in 'experimental_data.datasets'",
                    "give them distinct 'name' values (each names a results folder)",
                )
            seen.add(entry.name)
        return resolved


@dataclass(kw_only=True)
class AngleRange:
    """One entry of ``phi_filtering.target_ranges``: an inclusive range of phi, degrees."""

    min_angle: float = _opt(ge=-360, le=360, unit="degrees")
    """Lower end, degrees."""
    max_angle: float = _opt(ge=-360, le=360, unit="degrees")
    """Upper end, degrees; ``min_angle > max_angle`` wraps through 180 (170 .. -170)."""

    def contains(self, phi: Any) -> Any:
        """True where ``phi`` (degrees, scalar or array) lies in the range, ends included.

        Angles compare modulo 360 (as ``data.selection.angles_in_ranges`` does, with the
        same 1e-9 degree slack): ``[170, -170]`` and ``[170, 190]`` are the same range, and
        a range 360 degrees wide or more holds every angle.
        """
        phi = np.asarray(phi, dtype=float)
        width = self.max_angle - self.min_angle
        if width >= 360.0:
            inside = np.ones(phi.shape, dtype=bool)
        else:
            past_start = np.mod(phi - self.min_angle, 360.0)  # counter-clockwise from min_angle
            inside = (past_start <= width % 360.0 + _ANGLE_SLACK) | (past_start >= 360.0 - _ANGLE_SLACK)
        return inside if phi.ndim else bool(inside)


_ANGLE_SLACK = 1e-9
"""Slack on the inclusive ends of an angle range, degrees."""


@dataclass(kw_only=True)
class PhiFilteringConfig:
    """``phi_filtering``: which azimuthal angles to fit."""

    enabled: bool = False
    """True: fit only angles inside ``target_ranges``; False: fit every angle."""
    target_ranges: list[AngleRange] = _opt(factory=list)
    """Inclusive angle ranges, degrees."""

    def select(self, phi: Any) -> np.ndarray:
        """Boolean mask over ``phi`` (degrees): the angles this filter keeps."""
        phi = np.atleast_1d(np.asarray(phi, dtype=float))
        if not self.enabled:
            return np.ones(phi.shape, dtype=bool)
        keep = np.zeros(phi.shape, dtype=bool)
        for angle_range in self.target_ranges:
            keep |= angle_range.contains(phi)
        return keep

    def _check(self, ctx: _Context, path: str) -> None:
        if self.enabled and not self.target_ranges:
            raise ctx.error(
                f"'{_join(path, 'enabled')}' is true but '{_join(path, 'target_ranges')}' is empty",
                "add ranges such as - {min_angle: -10, max_angle: 10}, or set enabled: false",
            )


@dataclass(kw_only=True)
class PerAngleScalingConfig:
    """``initial_parameters.per_angle_scaling``: ``c2 = offset + contrast * g1^2`` per angle."""

    mode: str = _opt("individual", choices=SCALING_MODES)
    """individual (a fitted pair per angle) | averaged (one fitted pair) | fixed (from here)."""
    contrast: float | list[float] = _opt(0.5, gt=0, le=1)
    """Starting (or fixed) contrast: one value for every angle, or one per selected angle."""
    offset: float | list[float] = _opt(1.0, gt=0)
    """Starting (or fixed) offset (baseline near 1): one value, or one per selected angle."""

    def scaling_arrays(self, n_angles: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-angle (contrast, offset) arrays for ``n_angles`` selected angles.

        A single value is repeated; a list must have exactly ``n_angles`` entries.
        """
        out = []
        for name in SCALING_PARAMETERS:
            value = getattr(self, name)
            if isinstance(value, list):
                if len(value) != n_angles:
                    raise ConfigError(
                        f"config: 'initial_parameters.per_angle_scaling.{name}' has {len(value)} values "
                        f"but {n_angles} angles are selected -- give one value, or one per selected angle"
                    )
                out.append(np.asarray(value, dtype=float))
            else:
                out.append(np.full(n_angles, float(value)))
        return out[0], out[1]

    def _check(self, ctx: _Context, path: str) -> None:
        lengths = {}
        for name in SCALING_PARAMETERS:
            value = getattr(self, name)
            if isinstance(value, list):
                if not value:
                    raise ctx.error(
                        f"'{_join(path, name)}' is an empty list", "give one value, or one per selected angle"
                    )
                lengths[name] = len(value)
        if len(lengths) == 2 and lengths["contrast"] != lengths["offset"]:
            raise ctx.error(
                f"'{_join(path, 'contrast')}' has {lengths['contrast']} values but "
                f"'{_join(path, 'offset')}' has {lengths['offset']}",
                "give both one value per selected angle (or a single value each)",
            )


@dataclass(kw_only=True)
class InitialParametersConfig:
    """``initial_parameters``: starting values (and the truth for ``simulate``)."""

    parameter_names: list[str] = _opt(factory=list)
    """Physical parameter names, the order of ``values``; empty: the mode's canonical list."""
    values: list[float] | None = None
    """Starting values in ``parameter_names`` order; ``None``: the middle of each bound."""
    fixed_parameters: list[str] = _opt(factory=list)
    """Physical parameter names held at their value during NLSQ and CMC."""
    per_angle_scaling: PerAngleScalingConfig = _opt(factory=PerAngleScalingConfig)
    """Per-angle contrast and offset."""


@dataclass(kw_only=True)
class ParameterBound:
    """One entry of ``parameter_space.bounds``."""

    name: str = _opt()
    """Parameter name: a physical name, ``contrast`` or ``offset``."""
    min: float = _opt()
    """Lower bound, inclusive, in the parameter's unit."""
    max: float = _opt()
    """Upper bound, inclusive, in the parameter's unit."""
    prior_mu: float | None = None
    """Prior mean for CMC; ``None``: left to ``optimization.cmc.prior``."""
    prior_sigma: float | None = _opt(None, gt=0)
    """Prior width for CMC; ``None``: left to ``optimization.cmc.prior``."""
    type: str = _opt("TruncatedNormal", choices=PRIOR_TYPES)
    """Prior family: TruncatedNormal | Normal | Uniform (all confined to [min, max])."""


@dataclass(kw_only=True)
class ParameterSpaceConfig:
    """``parameter_space``: bounds and priors; unlisted parameters get ``DEFAULT_BOUNDS``."""

    bounds: list[ParameterBound] = _opt(factory=list)
    """Bounds of the listed parameters."""

    def bound(self, name: str) -> ParameterBound:
        """The listed bound of ``name``, or its default (``KeyError`` for an unknown name)."""
        for entry in self.bounds:
            if entry.name == name:
                return entry
        lo, hi = DEFAULT_BOUNDS[name]
        return ParameterBound(name=name, min=lo, max=hi)

    def bounds_for(self, name: str) -> tuple[float, float]:
        """``(min, max)`` of ``name``: the listed bound or the default of DESIGN section 2."""
        entry = self.bound(name)
        return float(entry.min), float(entry.max)

    def _check(self, ctx: _Context, path: str) -> None:
        seen: set[str] = set()
        for i, entry in enumerate(self.bounds):
            item = f"{_join(path, 'bounds')}[{i}]"
            if entry.name not in DEFAULT_BOUNDS:
                raise ctx.error(
                    f"unknown parameter '{entry.name}' in '{item}.name'",
                    _suggest_fix(entry.name, list(DEFAULT_BOUNDS)),
                )
            if entry.name in seen:
                raise ctx.error(
                    f"parameter '{entry.name}' has two entries in '{_join(path, 'bounds')}'", "keep one"
                )
            seen.add(entry.name)
            if not entry.min < entry.max:
                raise ctx.error(
                    f"'{item}' ({entry.name}) has min = {entry.min!r} >= max = {entry.max!r}",
                    "make min smaller than max",
                )


@dataclass(kw_only=True)
class NLSQConfig:
    """``optimization.nlsq``: the Levenberg-Marquardt fit."""

    max_iterations: int = _opt(100, ge=1)
    """Most iterations."""
    xtol: float = _opt(1e-8, gt=0)
    """Stop when the relative parameter step is below this."""
    gtol: float = _opt(1e-8, gt=0)
    """Stop when the scaled gradient is below this."""
    ftol: float = _opt(1e-10, gt=0)
    """Stop when the relative decrease of chi2 is below this."""
    loss: str = _opt("linear", choices=NLSQ_LOSSES)
    """linear | soft_l1 | huber | cauchy."""
    loss_scale: float = _opt(1.0, gt=0)
    """f_scale of the robust loss, in units of the weighted residual."""
    chunk_size: int = _opt(8192, ge=1)
    """Points per jitted chunk; bounds memory per rank."""
    start_search: bool = True
    """Scan a coarse grid of physical starting values on a subsample before the fit."""
    search_points: int = _opt(20000, ge=1000)
    """Points of the subsample used by the start search."""
    uncertainty: str = _opt("jackknife", choices=("jackknife", "model"))
    """Which standard error is ``std`` in result.json: jackknife | model."""
    jackknife_blocks: int = _opt(20, ge=2)
    """Blocks of the delete-one-block jackknife."""
    jackknife_blocking: str = _opt("influence", choices=("influence", "equal"))
    """influence (contiguous blocks of equal influence on the fit) | equal (equal frame counts)."""
    jackknife_iterations: int = _opt(20, ge=1)
    """Iterations of each jackknife refit, started from the full fit."""
    jackknife_parallel: str = _opt("points", choices=("points", "replicates"))
    """points (all ranks on each refit) | replicates (each rank refits its share of the blocks on a copy of all points)."""


@dataclass(kw_only=True)
class ShardingConfig:
    """``optimization.cmc.sharding``: how points are cut into shards."""

    strategy: str = _opt("stratified", choices=("stratified", "random"))
    """stratified (every shard holds every angle) | random (seeded random split)."""
    num_shards: int | str = _opt("auto", ge=1, auto=True)
    """Number of shards, or ``'auto'`` (from the sizes below)."""
    max_points_per_shard: int | str = _opt("auto", ge=1, auto=True)
    """Largest shard for the auto shard count, or ``'auto'``."""
    min_points_per_parameter: int = _opt(200, ge=1)
    """Smallest number of points per fitted parameter in a shard (auto shard count)."""


@dataclass(kw_only=True)
class PerShardMCMCConfig:
    """``optimization.cmc.per_shard_mcmc``: NUTS on each shard."""

    num_warmup: int = _opt(500, ge=1)
    """Warmup (adaptation) steps per chain."""
    num_samples: int = _opt(1000, ge=1)
    """Kept samples per chain."""
    num_chains: int = _opt(4, ge=1)
    """Chains per shard."""
    chain_method: str = _opt("parallel", choices=("parallel", "sequential"))
    """parallel (one host device per chain) | sequential."""
    target_accept_prob: float = _opt(0.8, gt=0, lt=1)
    """NUTS target acceptance probability."""
    retry_target_accept_prob: float = _opt(0.95, ge=0, lt=1)
    """A shard that fails the divergence or R-hat check is sampled once more with this
    target acceptance probability (smaller steps); 0, or a value not above
    ``target_accept_prob``, means no retry."""
    max_tree_depth: int = _opt(10, ge=1, le=20)
    """NUTS tree depth limit (at most 2**depth leapfrog steps)."""
    min_warmup: int = _opt(200, ge=0)
    """Floor of the warmup when it is scaled down for a small shard."""
    min_samples: int = _opt(300, ge=1)
    """Floor of the samples when they are scaled down for a small shard."""
    shard_timeout_s: float | None = _opt(None, gt=0, unit="s", example="3600' or 'shard_timeout_s: null")
    """Wall-time limit of one shard's sampling, seconds; ``None``: no limit."""


@dataclass(kw_only=True)
class CombinationConfig:
    """``optimization.cmc.combination``: shard filtering and consensus."""

    method: str = _opt(
        "robust_consensus_mc", choices=("consensus_mc", "robust_consensus_mc", "gaussian_product")
    )
    """consensus_mc | robust_consensus_mc | gaussian_product."""
    min_success_rate: float = _opt(0.8, gt=0, le=1)
    """Fraction of shards that must pass the checks, else the CMC fails."""
    max_divergence_rate: float = _opt(0.10, gt=0, le=1)
    """Shards with a larger fraction of divergent transitions are left out."""
    max_rhat: float = _opt(1.1, gt=1)
    """Shards with a larger split R-hat are left out."""
    outlier_zscore: float = _opt(3.5, gt=0)
    """robust_consensus_mc drops shards this many robust z-scores from the median."""


@dataclass(kw_only=True)
class PriorConfig:
    """``optimization.cmc.prior``: how CMC priors are built."""

    width_factor: float = _opt(10.0, gt=0)
    """Width of priors built from the NLSQ fit, in NLSQ standard errors."""
    calibrate: bool = True
    """True: build priors from the NLSQ fit; False: use parameter_space priors as given."""


@dataclass(kw_only=True)
class CMCConfig:
    """``optimization.cmc``: Consensus Monte Carlo."""

    seed: int = _opt(42, ge=0, lt=2**32)
    """Global seed; a shard's seed comes from (seed, shard index)."""
    sharding: ShardingConfig = _opt(factory=ShardingConfig)
    """Shards."""
    per_shard_mcmc: PerShardMCMCConfig = _opt(factory=PerShardMCMCConfig)
    """NUTS per shard."""
    combination: CombinationConfig = _opt(factory=CombinationConfig)
    """Shard filtering and consensus."""
    prior: PriorConfig = _opt(factory=PriorConfig)
    """Priors."""
    calibrate: bool = True
    """Temper the likelihood by the NLSQ jackknife-to-model variance ratio (correlated points)."""


@dataclass(kw_only=True)
class OptimizationConfig:
    """``optimization``."""

    method: str = _opt("nlsq", choices=("nlsq", "cmc", "both"))
    """nlsq | cmc | both (NLSQ, then CMC)."""
    nlsq: NLSQConfig = _opt(factory=NLSQConfig)
    """Least squares."""
    cmc: CMCConfig = _opt(factory=CMCConfig)
    """Consensus Monte Carlo."""


@dataclass(kw_only=True)
class OutputConfig:
    """``output``."""

    output_dir: str = "./homodyne_results"
    """Results root (relative to the working directory); one folder per dataset."""
    plots: bool = True
    """Write PNG plots."""

    def _check(self, ctx: _Context, path: str) -> None:
        if not self.output_dir.strip():
            raise ctx.error(
                f"'{_join(path, 'output_dir')}' is empty", "give a folder, e.g. ./homodyne_results"
            )


@dataclass(kw_only=True)
class ComputeConfig:
    """``compute``."""

    compilation_cache_dir: str | None = "~/.cache/homodyne_mpi/jax"
    """JAX persistent compilation cache folder; ``None`` disables it."""

    def _check(self, ctx: _Context, path: str) -> None:
        if self.compilation_cache_dir is not None and not self.compilation_cache_dir.strip():
            raise ctx.error(
                f"'{_join(path, 'compilation_cache_dir')}' is empty",
                "give a folder, or null to disable the cache",
            )


@dataclass(kw_only=True)
class HomodyneConfig:
    """The whole configuration file."""

    analysis_mode: str = _opt(choices=ANALYSIS_MODES)
    """static | laminar_flow."""
    shear_form: str = _opt("paper", choices=SHEAR_FORMS)
    """paper (sinc(Phi/2)) | homodyne-v2 (sinc(Phi/(2 pi))**2, the reference's code)."""
    analyzer_parameters: AnalyzerConfig = _opt()
    """Time grid and geometry."""
    experimental_data: ExperimentalDataConfig = _opt(factory=ExperimentalDataConfig)
    """Input files."""
    phi_filtering: PhiFilteringConfig = _opt(factory=PhiFilteringConfig)
    """Angle selection."""
    initial_parameters: InitialParametersConfig = _opt(factory=InitialParametersConfig)
    """Starting values."""
    parameter_space: ParameterSpaceConfig = _opt(factory=ParameterSpaceConfig)
    """Bounds and priors."""
    optimization: OptimizationConfig = _opt(factory=OptimizationConfig)
    """NLSQ and CMC settings."""
    output: OutputConfig = _opt(factory=OutputConfig)
    """Results."""
    compute: ComputeConfig = _opt(factory=ComputeConfig)
    """Compilation cache."""
    source_path: str | None = field(default=None, compare=False, metadata={"internal": True})
    """File the config was loaded from (not serialised)."""
    ignored_keys: list[str] = field(default_factory=list, compare=False, metadata={"internal": True})
    """Dotted paths of reference-package keys this program does not use (not serialised)."""

    def __post_init__(self) -> None:
        if not self.initial_parameters.parameter_names and self.analysis_mode in PHYSICAL_PARAMETERS:
            self.initial_parameters.parameter_names = list(PHYSICAL_PARAMETERS[self.analysis_mode])

    # --- construction and serialisation ------------------------------------------------

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, source: str | None = None, validate: bool = True
    ) -> HomodyneConfig:
        """Parse a config mapping (as read from YAML); ``source`` names it in messages.

        Reference-package keys are mapped or ignored (see the module docstring); the
        ignored ones are logged once and kept in ``ignored_keys``. Validates unless
        ``validate=False``.
        """
        ctx = _Context(source)
        if not isinstance(d, Mapping):
            raise ctx.error(
                f"the config must be a mapping of sections, got {_show(d)}",
                "start from 'homodyne-mpi init-config --mode static'",
            )
        raw = copy.deepcopy(dict(d))
        _adapt_reference_layout(raw, ctx)
        cfg = _parse(cls, raw, "", ctx)
        _apply_fixed_values(cfg, ctx)
        ctx.flush_log()
        cfg.source_path = source
        cfg.ignored_keys = list(ctx.ignored)
        if validate:
            cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain YAML-ready data (``source_path``/``ignored_keys`` left out)."""
        return _to_plain(self)

    def validate(self) -> None:
        """Check types, ranges and the rules between fields; raise ``ConfigError``."""
        ctx = _Context(self.source_path)
        _check_tree(self, "", ctx)

    def _check(self, ctx: _Context, path: str) -> None:
        mode = self.analysis_mode
        names_all = PHYSICAL_PARAMETERS[mode]
        init = self.initial_parameters
        space = self.parameter_space
        names = init.parameter_names
        for i, name in enumerate(names):
            key = f"initial_parameters.parameter_names[{i}]"
            if name not in names_all:
                if name in DEFAULT_BOUNDS:
                    raise ctx.error(
                        f"'{key}' = '{name}' is not a parameter of analysis_mode '{mode}'",
                        f"use the names {', '.join(names_all)}",
                    )
                raise ctx.error(f"unknown parameter '{name}' in '{key}'", _suggest_fix(name, names_all))
            if names.count(name) > 1:
                raise ctx.error(
                    f"parameter '{name}' appears twice in 'initial_parameters.parameter_names'", "keep one"
                )
        missing = [n for n in names_all if n not in names]
        if missing:
            raise ctx.error(
                f"'initial_parameters.parameter_names' lacks {', '.join(missing)} for analysis_mode '{mode}'",
                f"list all of {', '.join(names_all)} (or leave parameter_names out)",
            )
        if init.values is not None:
            if len(init.values) != len(names):
                raise ctx.error(
                    f"'initial_parameters.values' has {len(init.values)} values but parameter_names has {len(names)}",
                    f"give one value per name, in the order {', '.join(names)} (or null for mid-bounds)",
                )
            for i, (name, value) in enumerate(zip(names, init.values, strict=True)):
                lo, hi = space.bounds_for(name)
                if not lo <= value <= hi:
                    raise ctx.error(
                        f"'initial_parameters.values[{i}]' ({name}) = {value!r} is outside its bounds [{lo:g}, {hi:g}]",
                        f"move it inside, or widen parameter_space.bounds for {name}",
                    )
        for i, name in enumerate(init.fixed_parameters):
            if name not in names:
                raise ctx.error(
                    f"'initial_parameters.fixed_parameters[{i}]' = '{name}' is not in parameter_names",
                    _suggest_fix(name, names),
                )
            if init.fixed_parameters.count(name) > 1:
                raise ctx.error(
                    f"'{name}' appears twice in 'initial_parameters.fixed_parameters'", "keep one"
                )
        scaling = init.per_angle_scaling
        if len(set(init.fixed_parameters)) == len(names) and scaling.mode == "fixed":
            raise ctx.error(
                "every parameter is fixed ('initial_parameters.fixed_parameters' lists all and "
                "per_angle_scaling.mode is fixed)",
                "leave at least one parameter free",
            )
        for name in SCALING_PARAMETERS:
            lo, hi = space.bounds_for(name)
            value = getattr(scaling, name)
            for i, x in enumerate(value if isinstance(value, list) else [value]):
                key = f"initial_parameters.per_angle_scaling.{name}" + (
                    f"[{i}]" if isinstance(value, list) else ""
                )
                if not lo <= x <= hi:
                    raise ctx.error(
                        f"'{key}' = {x!r} is outside the {name} bounds [{lo:g}, {hi:g}]",
                        f"move it inside, or change parameter_space.bounds for {name}",
                    )

    # --- views used by the fits -----------------------------------------------------------

    def physical_parameter_names(self) -> list[str]:
        """Physical parameter names of the mode, canonical order."""
        return list(PHYSICAL_PARAMETERS[self.analysis_mode])

    def physical_initial_values(self) -> np.ndarray:
        """Starting values, canonical order; the middle of the bounds where none given."""
        given = {}
        if self.initial_parameters.values is not None:
            given = dict(
                zip(self.initial_parameters.parameter_names, self.initial_parameters.values, strict=True)
            )
        out = []
        for name in self.physical_parameter_names():
            if name in given:
                out.append(float(given[name]))
            else:
                lo, hi = self.parameter_space.bounds_for(name)
                out.append(0.5 * (lo + hi))
        return np.asarray(out, dtype=float)

    def physical_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` bound arrays, canonical order."""
        pairs = [self.parameter_space.bounds_for(n) for n in self.physical_parameter_names()]
        return np.asarray([p[0] for p in pairs]), np.asarray([p[1] for p in pairs])

    def fixed_mask(self) -> np.ndarray:
        """True for each physical parameter (canonical order) held fixed."""
        fixed = set(self.initial_parameters.fixed_parameters)
        return np.asarray([n in fixed for n in self.physical_parameter_names()], dtype=bool)

    def resolved_datasets(self) -> list[DatasetConfig]:
        """``experimental_data.resolved_datasets`` relative to this config file's folder."""
        base = Path(self.source_path).parent if self.source_path else None
        return self.experimental_data.resolved_datasets(base, source=self.source_path)


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping that repeats a key (PyYAML would silently keep the last one)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e5`` as a number and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                mark = key_node.start_mark
                raise _DuplicateKey(
                    None, None, f"duplicate key '{key}' (first at line {seen[key].line + 1})", mark
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_config(path: str | os.PathLike[str]) -> HomodyneConfig:
    """Read and validate a YAML config file; ``ConfigError`` with one line otherwise."""
    source = os.fspath(path)
    file = Path(source).expanduser()
    if not file.exists():
        raise ConfigError(
            f"{source}: config file not found -- check the path, or write one with "
            "'homodyne-mpi init-config --mode static' (or laminar_flow)"
        )
    if file.is_dir():
        raise ConfigError(f"{source}: is a folder, not a config file -- give the YAML file's path")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {exc.start}) -- save the config as UTF-8 YAML"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read the file ({exc.strerror}) -- check its permissions"
        ) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader
    except _DuplicateKey as exc:
        line = exc.problem_mark.line + 1
        raise ConfigError(f"{source}: {exc.problem} at line {line} -- keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            _one_line(
                f"{source}: malformed YAML{where}: {problem} -- fix the syntax there "
                "(indentation, a missing ':' or space after it, an unclosed quote or bracket)"
            )
        ) from None
    if data is None:
        raise ConfigError(
            f"{source}: the file is empty -- start from 'homodyne-mpi init-config --mode static' (or laminar_flow)"
        )
    return HomodyneConfig.from_dict(data, source=source)


class _Dumper(yaml.SafeDumper):
    """Block-style sections; lists of plain values on one line (``[D0, alpha]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    flat = all(not isinstance(item, (list, dict)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def dump_config(cfg: HomodyneConfig) -> str:
    """YAML text of ``cfg.to_dict()`` (every field, defaults filled in)."""
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def render_template(mode: str) -> str:
    """Commented YAML template for ``init-config --mode static|laminar_flow``."""
    if mode not in ANALYSIS_MODES:
        raise ConfigError(
            f"init-config: unknown mode '{mode}' -- use one of {', '.join(ANALYSIS_MODES)}"
            + _did_you_mean(mode, list(ANALYSIS_MODES))
        )
    from .config_template import build_template

    return build_template(mode)


# ---------------------------------------------------------------------------------------
# The generic parser and validator
# ---------------------------------------------------------------------------------------

# Keys of the reference package that have no use here, by section ("" is the top level,
# "[]" stands for any list index). Anything else unknown is an error.
_REFERENCE_ONLY: dict[str, frozenset[str]] = {
    k: frozenset(v)
    for k, v in {
        "": {
            "metadata", "analysis_settings", "noise_estimation", "performance", "logging",
            "quality_control", "validation", "config_version", "plotting",
        },
        "experimental_data": {
            "phi_angles_path", "phi_angles_file", "cache_file_path", "cache_filename_template",
            "cache_compression", "data_type", "file_format", "exchange_key",
        },
        "phi_filtering": {"fallback_to_all_angles", "algorithm", "tolerance", "quality_control"},
        "phi_filtering.target_ranges[]": {"description"},
        "initial_parameters": {"units"},
        "parameter_space": {"model", "priors"},
        "parameter_space.bounds[]": {"unit", "description"},
        "optimization": {"streaming", "stratification", "sequential", "sharding", "vi", "hybrid", "mcmc"},
        "optimization.nlsq": {
            "trust_region_scale", "verbose", "x_scale", "x_scale_map", "shear_transforms",
            "diagnostics", "progress", "hybrid_streaming", "multi_start", "cmaes",
            "hybrid_recovery", "memory_fraction", "memory_threshold_gb", "streaming",
            "stratified", "recovery", "anti_degeneracy",
        },
        "optimization.cmc": {
            "enable", "min_points_for_cmc", "run_id", "backend", "backend_config", "backend_name",
            "heartbeat_timeout", "prior_tempering", "reparameterization",
            "diagonal_correction", "constant_scaling_threshold", "validation",
        },
        "optimization.cmc.sharding": {"seed_base", "max_shards", "min_points_per_shard"},
        "optimization.cmc.per_shard_mcmc": {
            "subsample_size", "adaptive_sampling", "enable_jax_profiling", "jax_profile_dir",
        },
        "optimization.cmc.combination": {"validate_results", "min_success_rate_warning"},
        "output": {
            "base_directory", "formats", "create_subdirs", "timestamp_dirs", "compress_hdf5",
            "compression_level",
        },
    }.items()
}  # fmt: skip


class _Context:
    """What one parse or validation run knows: the source name and what it noticed."""

    def __init__(self, source: str | None) -> None:
        self.source = source or "config"
        self.ignored: list[str] = []
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.fixed_values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}  # moved key's path here -> path in the file

    def where(self, path: str) -> str:
        """The path the user wrote for ``path`` (differs for keys moved from elsewhere)."""
        for moved, original in self.origin.items():
            if path == moved or path.startswith((moved + ".", moved + "[")):
                return original + path[len(moved) :]
        return path

    def error(self, what: str, fix: str) -> ConfigError:
        return ConfigError(_one_line(f"{self.source}: {what} -- {fix}"))

    def ignore(self, path: str) -> None:
        path = self.where(path)
        if path not in self.ignored:
            self.ignored.append(path)

    def info(self, message: str) -> None:
        if message not in self.infos:
            self.infos.append(message)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def flush_log(self) -> None:
        """Log what was mapped and ignored: each note once, the ignored keys in one line."""
        for message in self.infos:
            logger.info("%s: %s", self.source, message)
        for message in self.warnings:
            logger.warning("%s: %s", self.source, message)
        self.ignored.sort()
        if self.ignored:
            logger.info(
                "%s: ignoring %d key(s) of the reference homodyne package that homodyne_mpi does not use: %s",
                self.source,
                len(self.ignored),
                ", ".join(self.ignored),
            )


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fields(cls: type) -> dict[str, Any]:
    return {f.name: f for f in fields(cls) if not f.metadata.get("internal")}


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _pattern(path: str) -> str:
    return re.sub(r"\[\d+\]", "[]", path)


def _parse(cls: type, raw: Any, path: str, ctx: _Context) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``: strict keys, typed values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ctx.error(
            f"'{path}' must be a mapping (a YAML section of key: value lines), got {_show(raw)}",
            f"indent its keys under '{path.rsplit('.', 1)[-1]}:'",
        )
    known = _fields(cls)
    hints = _hints(cls)
    reference_only = _REFERENCE_ONLY.get(_pattern(path), frozenset())
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ctx.error(
                f"key {key!r} in '{path or 'the top level'}' is not a name",
                "use the key names of the template",
            )
        key_path = _join(path, key)
        if key in known:
            f = known[key]
            if value is None and not _admits_none(hints[key]) and _has_default(f):
                continue  # null means the default
            kwargs[key] = _coerce(value, hints[key], key_path, ctx, f)
        elif key in reference_only:
            ctx.ignore(_pattern(key_path))
        else:
            raise ctx.error(f"unknown key '{key_path}'", _suggest_fix(key, list(known), valid_keys=True))
    for name, f in known.items():
        if name not in kwargs and not _has_default(f) and is_dataclass(hints[name]):
            kwargs[name] = _parse(hints[name], {}, _join(path, name), ctx)  # names the missing leaf
        elif name not in kwargs and not _has_default(f):
            example = f" e.g. '{name}: {f.metadata['example']}'" if "example" in f.metadata else ""
            raise ctx.error(
                f"missing key '{_join(path, name)}'", f"add it{example} (see 'homodyne-mpi init-config')"
            )
    return cls(**kwargs)


def _has_default(f: Any) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def _admits_none(tp: Any) -> bool:
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _coerce(value: Any, tp: Any, path: str, ctx: _Context, f: Any = None, desc: str | None = None) -> Any:
    """Convert ``value`` to type ``tp`` (a field's hint) or raise a one-line ConfigError."""
    meta = f.metadata if f is not None else {}
    if _is_union(tp):
        args = typing.get_args(tp)
        whole = _describe(tp, meta)
        if value is None and type(None) in args:
            return None
        if meta.get("auto") and value == "auto":
            return "auto" if str in args else None
        options = [a for a in args if a is not type(None) and not (meta.get("auto") and a is str)]
        lists = [a for a in options if typing.get_origin(a) is list]
        scalars = [a for a in options if typing.get_origin(a) is not list]
        if isinstance(value, (list, tuple)) and lists:
            return _coerce(value, lists[0], path, ctx, f)
        if scalars:
            return _coerce(value, scalars[0], path, ctx, f, desc=whole)
        if lists and meta.get("one_or_list"):
            return _coerce([value], lists[0], path, ctx, f)
        raise _type_error(value, whole, path, ctx, f)
    if typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, desc or _describe(tp, meta), path, ctx, f)
        return [_coerce(item, item_type, _join(path, i), ctx) for i, item in enumerate(value)]
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _parse(tp, value, path, ctx)
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _type_error(value, desc or _describe(tp, meta), path, ctx, f)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(value, desc or _describe(tp, meta), path, ctx, f, quote=True)
    if tp is float:
        number = _number(value)
        if number is None:
            raise _type_error(value, desc or _describe(tp, meta), path, ctx, f)
        if not math.isfinite(number):
            raise ctx.error(f"'{path}' must be a finite number, got {_show(value)}", "give a finite value")
        return number
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        number = _number(value)
        if number is None or not math.isfinite(number) or number != int(number):
            raise _type_error(value, desc or _describe(tp, meta), path, ctx, f)
        return int(number)
    raise TypeError(f"config field type {tp!r} has no parser")  # a bug here, not in the file


_NUMBER = re.compile(r"[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?")


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number or a numeric string, else ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return float(int(value))
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip().replace("_", ""))
    return None


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """Words for a type in messages: 'a number (s) or 'auto'', 'a list of numbers', ..."""
    unit = f" ({meta['unit']})" if meta.get("unit") else ""
    if _is_union(tp):
        args = typing.get_args(tp)
        parts = [
            _describe(a, {}) for a in args if a is not type(None) and not (meta.get("auto") and a is str)
        ]
        if meta.get("one_or_list"):
            parts = ["a number", *parts]
        parts[0] += unit
        if meta.get("auto"):
            parts.append("'auto'")
        elif type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        words = {float: "numbers", int: "integers", str: "strings", bool: "booleans"}
        return "a list of " + words.get(item, "mappings")
    if is_dataclass(tp):
        return "a mapping (a YAML section)"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}[tp] + unit


def _type_error(value: Any, desc: str, path: str, ctx: _Context, f: Any, quote: bool = False) -> ConfigError:
    key = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])
    if f is not None and f.metadata.get("example"):
        fix = f"write it like '{key}: {f.metadata['example']}'"
    elif f is not None and f.default not in (MISSING, None):
        default = f.default
        fix = f"write it like '{key}: {_yaml_scalar(default)}'"
    elif quote:
        fix = "put the value in quotes"
    else:
        fix = "see 'homodyne-mpi init-config' for an example"
    return ctx.error(f"'{path}' must be {desc}, got {_show(value)}", fix)


def _check_tree(obj: Any, path: str, ctx: _Context) -> None:
    """Validate a dataclass tree: types, field ranges and choices, then ``_check`` hooks."""
    hints = _hints(type(obj))
    for name, f in _fields(type(obj)).items():
        value = getattr(obj, name)
        key_path = _join(path, name)
        if is_dataclass(hints[name]):
            if not isinstance(value, hints[name]):
                raise ctx.error(
                    f"'{key_path}' must be a {hints[name].__name__}, got {_show(value)}", "fix the code"
                )
            _check_tree(value, key_path, ctx)
            continue
        item_type = _list_item_type(hints[name])
        if item_type is not None and is_dataclass(item_type) and isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, item_type):
                    raise ctx.error(f"'{key_path}[{i}]' must be a mapping, got {_show(item)}", "fix the code")
                _check_tree(item, _join(key_path, i), ctx)
            continue
        if value is None and not _admits_none(hints[name]):
            raise ctx.error(f"'{key_path}' must not be null", "give a value or leave the key out")
        _coerce(value, hints[name], key_path, ctx, f)
        _check_range(value, f.metadata, key_path, ctx)
    hook = getattr(obj, "_check", None)
    if hook is not None:
        hook(ctx, path)


def _list_item_type(tp: Any) -> Any:
    for candidate in (typing.get_args(tp) if _is_union(tp) else (tp,)):
        if typing.get_origin(candidate) is list:
            return typing.get_args(candidate)[0]
    return None


def _check_range(value: Any, meta: Mapping[str, Any], path: str, ctx: _Context) -> None:
    """Apply ``choices`` and ``gt``/``ge``/``lt``/``le`` of a field to its value(s)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_range(item, meta, _join(path, i), ctx)
        return
    if isinstance(value, str):
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ctx.error(
                f"'{path}' = '{value}' is not allowed",
                f"use one of: {', '.join(choices)}" + _did_you_mean(value, list(choices)),
            )
        return
    number = _number(value)
    limits = [
        (op, meta[key])
        for op, key in (("> ", "gt"), (">= ", "ge"), ("< ", "lt"), ("<= ", "le"))
        if key in meta
    ]
    if number is None or not limits:
        return
    if not all(_COMPARE[op](number, bound) for op, bound in limits):
        unit = f" ({meta['unit']})" if meta.get("unit") else ""
        rule = " and ".join(f"{op}{_format_number(bound)}" for op, bound in limits)
        raise ctx.error(f"'{path}' = {value!r} is out of range", f"it must be {rule}{unit}")


_COMPARE = {"> ": operator.gt, ">= ": operator.ge, "< ": operator.lt, "<= ": operator.le}


def _to_plain(obj: Any) -> Any:
    """Dataclass tree -> dicts, lists and scalars; ``dt: None`` is written ``auto``."""
    if is_dataclass(obj):
        out = {}
        for name, f in _fields(type(obj)).items():
            value = getattr(obj, name)
            if value is None and f.metadata.get("auto"):
                value = "auto"
            out[name] = _to_plain(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    return obj


# ---------------------------------------------------------------------------------------
# Reference-package layout
# ---------------------------------------------------------------------------------------

_REFERENCE_MODES = {"static_isotropic": "static", "static_anisotropic": "static"}
_REFERENCE_PER_ANGLE = {
    "auto": "individual",
    "individual": "individual",
    "averaged": "averaged",
    "constant_averaged": "averaged",
    "constant": "fixed",
    "fourier": "individual",
}
_AUTO_NOTE = (
    "per-angle mode 'auto' (reference package) is read as 'individual': a contrast and offset per angle"
)
_REFERENCE_COMBINATION = {"auto": "robust_consensus_mc", "weighted_gaussian": "gaussian_product"}
_MCMC_SAMPLER_KEYS = {  # optimization.mcmc key -> per_shard_mcmc key
    "num_warmup": "num_warmup",
    "num_samples": "num_samples",
    "num_chains": "num_chains",
    "target_accept_prob": "target_accept_prob",
    "max_tree_depth": "max_tree_depth",
    "max_treedepth": "max_tree_depth",  # v2.1 spelling
}


def _adapt_reference_layout(raw: dict[str, Any], ctx: _Context) -> None:
    """Rewrite the reference package's names and places into ours, in place."""
    _adapt_mode(raw, ctx)
    _adapt_experimental_data(raw, ctx)
    _adapt_parameter_names(raw, ctx)
    per_angle_sources = _adapt_optimization(raw, ctx)
    _adapt_per_angle_mode(raw, per_angle_sources, ctx)
    _adapt_output(raw, ctx)


def _section(parent: dict[str, Any], key: str, path: str, ctx: _Context, create: bool = False) -> dict | None:
    """``parent[key]`` as a dict (None if absent or null, unless ``create``)."""
    value = parent.get(key)
    if value is None:
        if not create:
            return None
        value = parent[key] = {}
    if not isinstance(value, Mapping):
        raise ctx.error(
            f"'{_join(path, key)}' must be a mapping (a YAML section of key: value lines), got {_show(value)}",
            f"indent its keys under '{key}:'",
        )
    if not isinstance(value, dict):
        value = parent[key] = dict(value)
    return value


def _rename(section: dict[str, Any], old: str, new: str, path: str, ctx: _Context) -> None:
    if old not in section:
        return
    if new in section:
        raise ctx.error(
            f"both '{_join(path, new)}' and its reference-package name '{_join(path, old)}' are set",
            "keep one",
        )
    section[new] = section.pop(old)
    ctx.info(f"'{ctx.where(_join(path, old))}' (reference package) read as '{_join(path, new)}'")


def _move(
    src: dict[str, Any], key: str, dst: dict[str, Any], new: str, src_path: str, dst_path: str, ctx: _Context
) -> None:
    """Move ``src[key]`` to ``dst[new]`` unless ``dst`` already sets it (then it is ignored)."""
    if key not in src:
        return
    value = src.pop(key)
    if new in dst:
        ctx.ignore(_join(src_path, key))
        return
    dst[new] = value
    ctx.info(f"'{ctx.where(_join(src_path, key))}' (reference package) read as '{_join(dst_path, new)}'")


def _ignore_rest(section: dict[str, Any], path: str, ctx: _Context) -> None:
    for key in section:
        ctx.ignore(_join(path, str(key)))


def _adapt_mode(raw: dict[str, Any], ctx: _Context) -> None:
    mode = raw.get("analysis_mode")
    settings = raw.get("analysis_settings")
    static_mode = settings.get("static_mode") if isinstance(settings, Mapping) else None
    if mode is None and isinstance(static_mode, bool):
        raw["analysis_mode"] = "static" if static_mode else "laminar_flow"
        ctx.info(f"analysis_mode '{raw['analysis_mode']}' taken from 'analysis_settings.static_mode'")
    elif isinstance(mode, str) and mode in _REFERENCE_MODES:
        raw["analysis_mode"] = _REFERENCE_MODES[mode]
        ctx.info(f"analysis_mode '{mode}' (reference package) read as '{raw['analysis_mode']}'")
    if isinstance(static_mode, bool) and raw.get("analysis_mode") in ANALYSIS_MODES:
        if static_mode != (raw["analysis_mode"] == "static"):
            ctx.warn(
                f"'analysis_settings.static_mode: {str(static_mode).lower()}' disagrees with "
                f"analysis_mode '{raw['analysis_mode']}'; analysis_mode is used"
            )


def _adapt_experimental_data(raw: dict[str, Any], ctx: _Context) -> None:
    data = _section(raw, "experimental_data", "", ctx)
    if data is None:
        return
    folder = data.pop("data_folder_path", None)
    name = data.pop("data_file_name", None)
    if data.get("file_path") is None and name is not None:
        for key, value in (("data_folder_path", folder), ("data_file_name", name)):
            if value is not None and not isinstance(value, str):
                raise _type_error(value, "a string", f"experimental_data.{key}", ctx, None, quote=True)
        data["file_path"] = os.path.join(folder or "", name)
        ctx.info(
            "'experimental_data.data_folder_path' + 'data_file_name' (reference package) read as "
            "'experimental_data.file_path'"
        )
        return
    for key, value in (("data_folder_path", folder), ("data_file_name", name)):
        if value is not None:
            ctx.ignore(f"experimental_data.{key}")


def _alias(name: Any, ctx: _Context) -> Any:
    if isinstance(name, str) and name in PARAMETER_ALIASES:
        ctx.info(f"parameter name '{name}' (reference package) read as '{PARAMETER_ALIASES[name]}'")
        return PARAMETER_ALIASES[name]
    return name


def _adapt_parameter_names(raw: dict[str, Any], ctx: _Context) -> None:
    space = _section(raw, "parameter_space", "", ctx)
    bounds = space.get("bounds") if space else None
    if isinstance(bounds, list):
        for entry in bounds:
            if isinstance(entry, dict) and "name" in entry:
                entry["name"] = _alias(entry["name"], ctx)
    init = _section(raw, "initial_parameters", "", ctx)
    if init is None:
        return
    names = init.get("parameter_names")
    if isinstance(names, list):
        init["parameter_names"] = names = [_alias(n, ctx) for n in names]
    fixed = init.get("fixed_parameters")
    if isinstance(fixed, Mapping):
        ctx.fixed_values = {_alias(k, ctx): v for k, v in fixed.items()}
        init["fixed_parameters"] = list(ctx.fixed_values)
        ctx.info(
            "'initial_parameters.fixed_parameters' as {name: value} (reference package): "
            "names held fixed, values put into initial_parameters.values"
        )
    elif isinstance(fixed, list):
        init["fixed_parameters"] = [_alias(n, ctx) for n in fixed]
    active = init.pop("active_parameters", None)
    if active is None:
        return
    path = "initial_parameters.active_parameters"
    if not isinstance(active, list) or not all(isinstance(n, str) for n in active):
        raise _type_error(active, "a list of strings", path, ctx, None)
    active = [_alias(n, ctx) for n in active]
    if not isinstance(names, list):
        names = PHYSICAL_PARAMETERS.get(raw.get("analysis_mode"), [])
    for i, name in enumerate(active):
        if name not in names:
            raise ctx.error(
                f"'{path}[{i}]' = '{name}' is not in parameter_names", _suggest_fix(name, list(names))
            )
    held = [n for n in names if n not in active]
    if held:
        fixed_list = init.get("fixed_parameters")
        fixed_list = list(fixed_list) if isinstance(fixed_list, list) else []
        init["fixed_parameters"] = fixed_list + [n for n in held if n not in fixed_list]
        ctx.info(f"'{path}' (reference package): the other parameters ({', '.join(held)}) are held fixed")


def _adapt_optimization(raw: dict[str, Any], ctx: _Context) -> list[tuple[str, Any]]:
    """Map the reference's optimization keys; return the per-angle modes it found."""
    opt = _section(raw, "optimization", "", ctx)
    if opt is None:
        return []
    if opt.get("method") == "mcmc":
        opt["method"] = "cmc"
        ctx.info("optimization.method 'mcmc' (reference package) read as 'cmc'")
    per_angle: list[tuple[str, Any]] = []
    if isinstance(opt.get("sharding"), Mapping):
        ctx.warn(
            "'optimization.sharding' is ignored, as the reference package ignores it; if it was meant "
            "as optimization.cmc.sharding, indent it under 'cmc:'"
        )
    mcmc = _section(opt, "mcmc", "optimization", ctx)
    if mcmc is not None:
        opt.pop("mcmc")
        cmc = _section(opt, "cmc", "optimization", ctx, create=True)
        for block in ("sharding", "combination", "per_shard_mcmc", "validation"):
            src = _section(mcmc, block, "optimization.mcmc", ctx)
            mcmc.pop(block, None)
            if src is None:
                continue
            dst = _section(cmc, block, "optimization.cmc", ctx, create=True)
            for key, value in src.items():
                old, new = f"optimization.mcmc.{block}.{key}", f"optimization.cmc.{block}.{key}"
                if key in dst:
                    ctx.ignore(old)
                else:
                    dst[key] = value
                    ctx.origin[new] = old
            ctx.info(f"'optimization.mcmc.{block}' (reference package) read as 'optimization.cmc.{block}'")
        if "per_angle_mode" in mcmc:
            per_angle.append(("optimization.mcmc.per_angle_mode", mcmc.pop("per_angle_mode")))
        shard_mcmc = _section(cmc, "per_shard_mcmc", "optimization.cmc", ctx, create=True)
        for key, new in _MCMC_SAMPLER_KEYS.items():
            _move(mcmc, key, shard_mcmc, new, "optimization.mcmc", "optimization.cmc.per_shard_mcmc", ctx)
        _ignore_rest(mcmc, "optimization.mcmc", ctx)
    nlsq = _section(opt, "nlsq", "optimization", ctx)
    if nlsq is not None:
        _rename(nlsq, "tolerance", "ftol", "optimization.nlsq", ctx)
        defense = _section(nlsq, "anti_degeneracy", "optimization.nlsq", ctx)
        if defense is not None:
            if "per_angle_mode" in defense:
                per_angle.insert(
                    0, ("optimization.nlsq.anti_degeneracy.per_angle_mode", defense.pop("per_angle_mode"))
                )
            _ignore_rest(defense, "optimization.nlsq.anti_degeneracy", ctx)
        nlsq.pop("anti_degeneracy", None)
        if nlsq.get("loss") == "arctan":
            nlsq["loss"] = "cauchy"
            ctx.warn("optimization.nlsq.loss 'arctan' (reference package) is not available; using 'cauchy'")
    cmc = _section(opt, "cmc", "optimization", ctx)
    if cmc is not None:
        _adapt_cmc(cmc, per_angle, ctx)
    return per_angle


def _adapt_cmc(cmc: dict[str, Any], per_angle: list[tuple[str, Any]], ctx: _Context) -> None:
    path = "optimization.cmc"
    if "per_angle_mode" in cmc:
        per_angle.append((f"{path}.per_angle_mode", cmc.pop("per_angle_mode")))
    has_flat = any(k in cmc for k in ("combination_method", "min_success_rate"))
    validation = _section(cmc, "validation", path, ctx)
    combination = _section(cmc, "combination", path, ctx, create=has_flat or validation is not None)
    if combination is not None:
        _move(cmc, "combination_method", combination, "method", path, f"{path}.combination", ctx)
        _move(cmc, "min_success_rate", combination, "min_success_rate", path, f"{path}.combination", ctx)
        if validation is not None:
            cmc.pop("validation")
            for old, new in (
                ("max_per_shard_rhat", "max_rhat"),
                ("max_divergence_rate", "max_divergence_rate"),
                ("min_success_rate", "min_success_rate"),
            ):
                _move(validation, old, combination, new, f"{path}.validation", f"{path}.combination", ctx)
            _ignore_rest(validation, f"{path}.validation", ctx)
        method = combination.get("method")
        if method in _REFERENCE_COMBINATION:
            combination["method"] = _REFERENCE_COMBINATION[method]
            ctx.info(f"combination method '{method}' (reference package) read as '{combination['method']}'")
        elif method == "simple_average":
            combination["method"] = "consensus_mc"
            ctx.warn(
                "combination method 'simple_average' (reference package) is not available; using 'consensus_mc'"
            )
    if "per_shard_timeout" in cmc:
        shard_mcmc = _section(cmc, "per_shard_mcmc", path, ctx, create=True)
        _move(cmc, "per_shard_timeout", shard_mcmc, "shard_timeout_s", path, f"{path}.per_shard_mcmc", ctx)
    sharding = _section(cmc, "sharding", path, ctx)
    if sharding is not None:
        _rename(sharding, "min_points_per_param", "min_points_per_parameter", f"{path}.sharding", ctx)
        _rename(sharding, "sharding_strategy", "strategy", f"{path}.sharding", ctx)
        if sharding.get("strategy") == "contiguous":
            sharding["strategy"] = "stratified"
            ctx.warn(
                "sharding strategy 'contiguous' (reference package) would leave angles out of shards; "
                "using 'stratified'"
            )


def _adapt_per_angle_mode(raw: dict[str, Any], sources: list[tuple[str, Any]], ctx: _Context) -> None:
    init = _section(raw, "initial_parameters", "", ctx, create=bool(sources))
    if init is None:
        return
    scaling = _section(init, "per_angle_scaling", "initial_parameters", ctx, create=bool(sources))
    if scaling is None:
        return
    ours = scaling.get("mode")
    if ours is not None:
        for path, _ in sources:
            ctx.ignore(path)
        if ours == "auto":
            scaling["mode"] = "individual"
            ctx.info(_AUTO_NOTE)
        return
    if not sources:
        return
    path, value = sources[0]
    for other_path, other in sources[1:]:
        if other != value:
            ctx.warn(f"'{other_path}' = {other!r} differs from '{path}' = {value!r}; the latter is used")
            ctx.ignore(other_path)
    if not isinstance(value, str) or value not in _REFERENCE_PER_ANGLE:
        raise ctx.error(
            f"'{path}' = {_show(value)} is not a per-angle mode",
            f"use one of: {', '.join(_REFERENCE_PER_ANGLE)}, or set initial_parameters.per_angle_scaling.mode",
        )
    mapped = _REFERENCE_PER_ANGLE[value]
    if value == "auto":
        ctx.info(_AUTO_NOTE)
    elif value == "constant" and (scaling.get("contrast") is None or scaling.get("offset") is None):
        mapped = "individual"
        ctx.warn(
            f"'{path}' = 'constant' needs per_angle_scaling.contrast and offset in the config; "
            "they are missing, so contrast and offset are fitted per angle ('individual')"
        )
    elif value == "fourier":
        ctx.warn(
            f"'{path}' = 'fourier' is not available; using 'individual' (one contrast and offset per angle)"
        )
    else:
        ctx.info(f"'{path}' = '{value}' (reference package) read as per_angle_scaling.mode '{mapped}'")
    scaling["mode"] = mapped


def _adapt_output(raw: dict[str, Any], ctx: _Context) -> None:
    output = _section(raw, "output", "", ctx)
    if output is not None:
        _rename(output, "directory", "output_dir", "output", ctx)
    plotting = _section(raw, "plotting", "", ctx)
    if plotting is None:
        if "plotting" in raw:
            raw.pop("plotting")
            ctx.ignore("plotting")
        return
    raw.pop("plotting")
    if "save_plots" in plotting:
        output = _section(raw, "output", "", ctx, create=True)
        _move(plotting, "save_plots", output, "plots", "plotting", "output", ctx)
    _ignore_rest(plotting, "plotting", ctx)


def _apply_fixed_values(cfg: HomodyneConfig, ctx: _Context) -> None:
    """Put the values of a reference ``fixed_parameters: {name: value}`` into ``values``."""
    if not ctx.fixed_values:
        return
    init = cfg.initial_parameters
    names = init.parameter_names
    if init.values is None:
        values = []
        for name in names:
            try:
                lo, hi = cfg.parameter_space.bounds_for(name)
            except KeyError:  # unknown name: validation reports it
                lo = hi = 0.0
            values.append(0.5 * (lo + hi))
    else:
        values = list(init.values)
    if len(values) != len(names):
        return  # validation reports the length mismatch
    for name, value in ctx.fixed_values.items():
        number = _coerce(value, float, f"initial_parameters.fixed_parameters.{name}", ctx)
        if name in names:
            values[names.index(name)] = number
    init.values = values


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def _did_you_mean(word: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(str(word), candidates, n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def _suggest_fix(word: str, candidates: list[str], valid_keys: bool = False) -> str:
    matches = difflib.get_close_matches(str(word), candidates, n=1, cutoff=0.6)
    if matches:
        return f"did you mean '{matches[0]}'?"
    label = "valid keys here" if valid_keys else "valid names"
    return f"{label}: {', '.join(candidates)}"


def _check_dataset_name(name: str, path: str, ctx: _Context) -> None:
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise ctx.error(
            f"'{path}' = {name!r} cannot name a results folder",
            "use a plain name without '/' (e.g. sample_A)",
        )


def _show(value: Any) -> str:
    kind = {
        type(None): "null",
        bool: "a boolean",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "a mapping",
    }.get(type(value))
    if kind is None:
        kind = (
            "a mapping"
            if isinstance(value, Mapping)
            else "a number" if _number(value) is not None else type(value).__name__
        )
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})" if kind != "null" else "null"


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
