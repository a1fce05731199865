"""The whole configuration: :class:`HomodyneConfig`, its cross-section rules and views.

``HomodyneConfig.from_dict`` parses a mapping (a reference-format one is adapted first), ``validate()`` checks values,
``to_dict()`` writes every field back (defaults filled in) so that ``from_dict(cfg.to_dict()) == cfg``. Every problem is
a :class:`~homodyne_mpi.errors.ConfigError` whose message is one line: the file, the dotted key and the fix.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..vocabulary import ANALYSIS_MODES, PHYSICAL_PARAMETERS, SHEAR_FORMS
from .context import Context, option, show, suggest_fix
from .fitting import OptimizationConfig
from .generic import check_tree, parse, to_plain
from .reference import adapt_reference, apply_fixed_values, finish_reference
from .sections import (
    DEFAULT_BOUNDS,
    SCALING_PARAMETERS,
    AnalyzerConfig,
    ComputeConfig,
    DatasetConfig,
    ExperimentalDataConfig,
    InitialParametersConfig,
    OutputConfig,
    ParameterSpaceConfig,
    PhiFilteringConfig,
)


@dataclass(kw_only=True)
class HomodyneConfig:
    """The whole configuration file."""

    analysis_mode: str = option(choices=ANALYSIS_MODES, example="static")
    """The model. static: D0, alpha, D_offset; laminar_flow: those and gamma_dot_t0, beta, gamma_dot_t_offset, phi0."""
    shear_form: str = option("paper", choices=SHEAR_FORMS)
    """Shear term of g1 (laminar_flow only):
    - paper: g1 = g1_diff * sinc(Phi/2), the published equation (He et al. 2024)
    - homodyne-v2: g1 = g1_diff * sinc(Phi/(2 pi))^2, what the reference package
      computes; reproduces its results (to 1e-9 relative)"""
    analyzer_parameters: AnalyzerConfig = option()
    experimental_data: ExperimentalDataConfig = option(factory=ExperimentalDataConfig)
    phi_filtering: PhiFilteringConfig = option(factory=PhiFilteringConfig)
    initial_parameters: InitialParametersConfig = option(factory=InitialParametersConfig)
    parameter_space: ParameterSpaceConfig = option(factory=ParameterSpaceConfig)
    """Bounds and CMC priors of each parameter."""
    optimization: OptimizationConfig = option(factory=OptimizationConfig)
    """NLSQ and CMC settings."""
    output: OutputConfig = option(factory=OutputConfig)
    compute: ComputeConfig = option(factory=ComputeConfig)
    source_path: str | None = field(default=None, compare=False, metadata={"internal": True})
    """File the config was loaded from (not serialised)."""
    ignored_keys: list[str] = field(default_factory=list, compare=False, metadata={"internal": True})
    """Dotted paths of reference-package keys this program does not use (not serialised)."""

    def __post_init__(self) -> None:
        if not self.initial_parameters.parameter_names and self.analysis_mode in PHYSICAL_PARAMETERS:
            self.initial_parameters.parameter_names = list(PHYSICAL_PARAMETERS[self.analysis_mode])

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None, validate: bool = True) -> HomodyneConfig:
        """Parse a config mapping (as read from YAML); ``source`` names it in messages. A reference-package config is
        adapted first (:mod:`.reference`; its ignored keys are kept in ``ignored_keys``). Validates unless ``validate=False``.
        """
        ctx = Context(source)
        if not isinstance(d, Mapping):
            raise ctx.error(
                f"the config must be a mapping of sections, got {show(d)}",
                "start from 'homodyne-mpi init-config --mode static'",
            )
        raw = copy.deepcopy(dict(d))
        adapt_reference(raw, ctx)
        cfg = parse(cls, raw, "", ctx)
        apply_fixed_values(cfg, ctx)
        finish_reference(ctx)
        ctx.flush_log()
        cfg.source_path, cfg.ignored_keys = source, list(ctx.ignored)
        if validate:
            cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain YAML-ready data (``source_path``/``ignored_keys`` left out)."""
        return to_plain(self)

    def validate(self) -> None:
        """Check types, ranges and the rules between fields; raise ``ConfigError``."""
        check_tree(self, "", Context(self.source_path))

    def _check(self, ctx: Context, path: str) -> None:
        """The rules between sections: parameter names, values inside bounds, fixed names."""
        mode, init, space = self.analysis_mode, self.initial_parameters, self.parameter_space
        names_all, names = PHYSICAL_PARAMETERS[mode], init.parameter_names
        for i, name in enumerate(names):
            key = f"initial_parameters.parameter_names[{i}]"
            if name not in names_all:
                if name in DEFAULT_BOUNDS:
                    raise ctx.error(
                        f"'{key}' = '{name}' is not a parameter of analysis_mode '{mode}'",
                        f"use the names {', '.join(names_all)}",
                    )
                raise ctx.error(f"unknown parameter '{name}' in '{key}'", suggest_fix(name, list(names_all)))
            if names.count(name) > 1:
                raise ctx.error(f"parameter '{name}' appears twice in 'initial_parameters.parameter_names'", "keep one")
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
                    suggest_fix(name, names),
                )
            if init.fixed_parameters.count(name) > 1:
                raise ctx.error(f"'{name}' appears twice in 'initial_parameters.fixed_parameters'", "keep one")
        scaling = init.per_angle_scaling
        if len(set(init.fixed_parameters)) == len(names) and scaling.mode == "fixed":
            raise ctx.error(
                "every parameter is fixed ('initial_parameters.fixed_parameters' lists all and per_angle_scaling.mode is fixed)",
                "leave at least one parameter free",
            )
        for name in SCALING_PARAMETERS:
            lo, hi = space.bounds_for(name)
            value = getattr(scaling, name)
            for i, x in enumerate(value if isinstance(value, list) else [value]):
                key = f"initial_parameters.per_angle_scaling.{name}" + (f"[{i}]" if isinstance(value, list) else "")
                if not lo <= x <= hi:
                    raise ctx.error(
                        f"'{key}' = {x!r} is outside the {name} bounds [{lo:g}, {hi:g}]",
                        f"move it inside, or change parameter_space.bounds for {name}",
                    )

    def physical_parameter_names(self) -> list[str]:
        """Physical parameter names of the mode, canonical order."""
        return list(PHYSICAL_PARAMETERS[self.analysis_mode])

    def physical_initial_values(self) -> np.ndarray:
        """Starting values, canonical order; the middle of the bounds where none given."""
        init = self.initial_parameters
        given = {} if init.values is None else dict(zip(init.parameter_names, init.values, strict=True))
        names, (lower, upper) = self.physical_parameter_names(), self.physical_bounds()
        return np.asarray([float(given[n]) if n in given else 0.5 * (lo + hi) for n, lo, hi in zip(names, lower, upper)])

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
