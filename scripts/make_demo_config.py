"""Write the demo's laminar-flow config: the init-config template with demo values.

Usage: python make_demo_config.py OUT.yaml
"""

from __future__ import annotations

import sys

import yaml

from homodyne_mpi.config import load_config, render_template

DEMO_TRUTH = [10000.0, -0.5, 5.0, 1.0e-4, 0.2, 1.0e-5, 4.0]
"""D0, alpha, D_offset, gamma_dot_t0, beta, gamma_dot_t_offset, phi0 of the simulated data."""


def demo_config() -> dict:
    """The laminar-flow template with a 150-frame window, dt = 0.1 s and the demo truth."""
    config = yaml.safe_load(render_template("laminar_flow"))
    config["analyzer_parameters"].update({"dt": 0.1, "start_frame": 1, "end_frame": 150})
    config["experimental_data"]["file_path"] = "demo.h5"
    config["phi_filtering"]["enabled"] = False
    config["initial_parameters"]["values"] = DEMO_TRUTH
    config["initial_parameters"]["per_angle_scaling"].update({"contrast": 0.3, "offset": 1.0})
    config["compute"]["compilation_cache_dir"] = ".jax_cache"
    return config


def main(path: str) -> None:
    with open(path, "w") as handle:
        yaml.safe_dump(demo_config(), handle, sort_keys=False)
    load_config(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1])
