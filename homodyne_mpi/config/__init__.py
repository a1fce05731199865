"""Typed configuration: YAML in, validated dataclasses out, and back to YAML.

Modules: ``sections`` and ``fitting`` (the schema: a dataclass per YAML section, a docstring per field), ``schema`` (the
whole config, cross-section rules), ``generic`` (type-driven parser and validator), ``context`` (field options, messages),
``reference`` (configs of the reference ``homodyne`` package), ``yaml_io`` (files), ``template`` (``init-config``).
docs/architecture.md describes the config as a whole.
"""

from ..vocabulary import PHYSICAL_PARAMETERS
from .schema import HomodyneConfig
from .sections import DEFAULT_BOUNDS, AnalyzerConfig, DatasetConfig, ExperimentalDataConfig, ScatteringConfig
from .template import render_template
from .yaml_io import dump_config, load_config

__all__ = [
    "DEFAULT_BOUNDS",
    "PHYSICAL_PARAMETERS",
    "AnalyzerConfig",
    "DatasetConfig",
    "ExperimentalDataConfig",
    "HomodyneConfig",
    "ScatteringConfig",
    "dump_config",
    "load_config",
    "render_template",
]
