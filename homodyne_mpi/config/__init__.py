"""Typed configuration: YAML in, validated dataclasses out, and back to YAML.

Modules by job: ``sections`` and ``fitting`` (the schema: one dataclass per YAML section, a docstring per field, their
checks), ``schema`` (the whole config and its cross-section rules), ``generic`` (the type-driven parser and validator),
``context`` (field options and one-line messages), ``reference`` with ``reference_keys.yaml`` (configs of the reference
``homodyne`` package), ``yaml_io`` (files) and ``template`` (the ``init-config`` text, generated from the schema).
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
