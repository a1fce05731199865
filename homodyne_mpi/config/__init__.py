"""Typed configuration: YAML in, validated dataclasses out, and back to YAML.

Modules by job: ``sections`` and ``fitting`` (the schema: one dataclass per YAML section,
a docstring per field, their checks), ``schema`` (the whole config and its cross-section
rules), ``generic`` (the type-driven parser and validator), ``context`` (field options
and one-line messages), ``reference`` with ``reference_keys.yaml`` (configs of the
reference ``homodyne`` package), ``yaml_io`` (files) and ``template`` (the
``init-config`` text, generated from the schema). docs/architecture.md describes the
config as a whole.
"""

from ..vocabulary import ANALYSIS_MODES, PARAMETER_UNITS, PHYSICAL_PARAMETERS, SCALING_MODES, SHEAR_FORMS
from .fitting import (
    CMCConfig,
    CombinationConfig,
    NLSQConfig,
    OptimizationConfig,
    PerShardMCMCConfig,
    PriorConfig,
    ShardingConfig,
)
from .reference import PARAMETER_ALIASES
from .schema import HomodyneConfig
from .sections import (
    DEFAULT_BOUNDS,
    SCALING_PARAMETERS,
    AnalyzerConfig,
    AngleRange,
    ComputeConfig,
    DatasetConfig,
    ExperimentalDataConfig,
    GeometryConfig,
    InitialParametersConfig,
    OutputConfig,
    ParameterBound,
    ParameterSpaceConfig,
    PerAngleScalingConfig,
    PhiFilteringConfig,
    ScatteringConfig,
)
from .template import render_template
from .yaml_io import dump_config, load_config

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
