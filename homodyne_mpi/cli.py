"""``homodyne-mpi``: the command line. Maps every outcome to an exit code.

Exit codes: 0 success, 2 bad config or input, 3 interrupted (checkpoint written),
1 anything else. JAX is imported only after the host-device count is set.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, InputError, collective

log = logging.getLogger("homodyne_mpi.cli")

DEFAULT_OUTPUT_DIR = "./homodyne_results"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per task."""
    parser = argparse.ArgumentParser(
        prog="homodyne-mpi",
        description="Fit XPCS two-time correlations to the transport-coefficient model (NLSQ and CMC), on one or many MPI ranks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run, simulate, validate, init, plot, report = (
        sub.add_parser(name, help=summary, description=function.__doc__) for name, (function, summary) in COMMANDS.items()
    )
    run.add_argument("config", help="YAML config file")
    run.add_argument("--method", choices=("nlsq", "cmc", "both"), help="fit method (default: optimization.method of the config)")
    run.add_argument("--output-dir", help=f"results folder (default: output.output_dir of the config, else {DEFAULT_OUTPUT_DIR})")
    run.add_argument(
        "--no-nlsq-warmstart", action="store_true", help="CMC without an NLSQ fit first (priors from the config bounds)"
    )
    run.add_argument(
        "--fresh", action="store_true", help="ignore checkpoints and finished results in the output folder; refit everything"
    )
    run.add_argument(
        "--group-size",
        type=int,
        metavar="N",
        help="ranks per rank group in a batch: groups fit different data sets at once (default: compute.rank_group_size, else chosen from the data set sizes)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging, and log lines from every rank")

    simulate.add_argument("config", help="YAML config file (mode, q, dt, frames, gap, shear_form, truth values)")
    simulate.add_argument("--output", required=True, help="HDF5 file to write (the truth goes to FILE.truth.json)")
    simulate.add_argument("--layout", choices=("aps-u", "aps-legacy"), default="aps-u", help="HDF5 layout (default aps-u)")
    simulate.add_argument("--phi", help="comma-separated angles in degrees, e.g. -30,0,30 (default: 6 angles)")
    simulate.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sigma in c2 units (default 0: exact model)")
    simulate.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    simulate.add_argument(
        "--dtype", choices=("float64", "float32"), default="float64", help="stored matrix type (float32 mimics a correlator)"
    )
    simulate.add_argument(
        "--noise-model",
        choices=("gaussian", "speckle"),
        default="gaussian",
        help="independent Gaussian noise, or speckle-like noise correlated along rows and columns",
    )

    validate.add_argument("config", help="YAML config file")
    validate.add_argument("--no-data", action="store_true", help="check the config only, not the data files")

    init.add_argument("--mode", choices=("static", "laminar_flow"), required=True)
    init.add_argument("--output", "-o", help="file to write (default: standard output)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    for results in (plot, report):
        results.add_argument("result_dir")
    return parser


def parse_phi(text: str | None) -> list[float] | None:
    """``"0,45,90"`` -> ``[0.0, 45.0, 90.0]``; a bad list is a ``ConfigError``."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--phi {text!r} is not a comma-separated list of angles -- write e.g. --phi 0,45,90") from None
    if not values:
        raise ConfigError("--phi is empty -- write e.g. --phi 0,45,90")
    return values


_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d)")


def attach_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--phi -30,0,30`` -> ``--phi=-30,0,30`` for every option that takes a value (argparse
    reads a value that starts with '-' as an option unless it is a single number)."""
    takes_value: set[str] = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:  # argparse keeps its actions only here
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
            elif action.option_strings and action.nargs is None:
                takes_value.update(action.option_strings)
    out: list[str] = []
    pending = False
    for token in argv:
        if pending and _NEGATIVE_VALUE.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
        pending = token in takes_value
    return out


# -- commands ---------------------------------------------------------------------------


def command_run(args, comm) -> int:
    """Fit every data set of CONFIG; run under mpiexec/srun for several ranks."""
    from .config import load_config
    from .config.fitting import FRAME_SHARED_FIX, frame_shared_problem
    from .parallel.devices import configure_host_devices, enable_compilation_cache
    from .parallel.launch_check import check_launch
    from .parallel.signals import install_stop_handlers

    check_launch(comm)
    install_stop_handlers()
    cfg = comm.run_on_root(lambda: load_config(args.config))
    configure_host_devices(cfg.optimization.cmc.per_shard_mcmc.num_chains)
    cache = enable_compilation_cache(cfg.compute.compilation_cache_dir)
    if cache:
        log.info("JAX compilation cache: %s", cache)
    from .pipeline import run_batch

    method = args.method or cfg.optimization.method
    problem = frame_shared_problem(cfg.optimization.nlsq, method)
    if problem is not None:
        raise InputError(f"--method {method}: optimization.nlsq.noise_model 'frame_shared' {problem} -- {FRAME_SHARED_FIX}")
    output_dir = Path(args.output_dir or cfg.output.output_dir or DEFAULT_OUTPUT_DIR)
    options = dict(nlsq_warm_start=not args.no_nlsq_warmstart, fresh=args.fresh, group_size=group_size(args, cfg))
    return run_batch(cfg, comm, method=method, output_dir=output_dir, **options)


def group_size(args, cfg) -> int | None:
    """Ranks per rank group: ``--group-size``, else ``compute.rank_group_size`` (None: automatic)."""
    size = args.group_size if args.group_size is not None else cfg.compute.rank_group_size
    if size is not None and size < 1:
        message = f"--group-size {size} is not a rank count -- give a whole number of at least 1, or leave it out"
        raise collective(ConfigError(message))  # every rank parsed the same arguments
    return size


def command_simulate(args, comm) -> int:
    """Write synthetic two-time data from the model; the truth is the config's initial_parameters."""
    from .config import load_config

    cfg = load_config(args.config)
    from .data.simulate_config import simulate_from_config

    options = {name: getattr(args, name) for name in ("layout", "noise", "seed", "dtype", "noise_model")}
    truth = simulate_from_config(cfg, args.output, phi=parse_phi(args.phi), **options)
    print(
        f"wrote {args.output} ({truth.get('layout', args.layout)}, {len(truth.get('phi', []))} angles, {truth.get('n_frames')} frames) and its truth sidecar"
    )
    return 0


def command_validate(args, comm) -> int:
    """Validate CONFIG and open its data set(s); print the config with defaults filled in. Exit 0 when usable, 2 when not."""
    from .config import dump_config, load_config

    cfg = load_config(args.config)
    print(dump_config(cfg), end="")
    if cfg.ignored_keys:
        print(f"# ignored reference-package keys: {', '.join(cfg.ignored_keys)}")
    if args.no_data:
        return 0
    from .data.loader import load_config_dataset

    for dataset in cfg.resolved_datasets():
        data = load_config_dataset(cfg, dataset)
        print(
            f"# data set '{dataset.name}': {data.layout} file {data.source}; q = {data.q:g} 1/A; "
            f"{data.n_angles} angle(s) {[round(float(p), 3) for p in data.phi]} deg; frames "
            f"{data.start_frame}..{data.end_frame} ({data.n_frames}); dt = {data.dt:g} s ({data.dt_source}); "
            f"{data.n_points} points"
        )
    return 0


def command_init_config(args, comm) -> int:
    """Write a commented config template for a mode."""
    from .config import render_template

    text = render_template(args.mode)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    target = Path(args.output)
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists -- choose another --output or add --force to overwrite it")
    target.write_text(text)
    print(f"wrote {target}")
    return 0


def command_plot(args, comm) -> int:
    """Redraw the PNG figures of RESULT_DIR from its saved results, without refitting."""
    from .plots.redraw import redraw_results

    return redraw_results(Path(args.result_dir))


def command_report(args, comm) -> int:
    """Print parameters, fit quality, CMC shard health, timings and ranks of RESULT_DIR."""
    from .report import print_report

    return print_report(Path(args.result_dir))


COMMANDS = {  # sub-command: (function, whose docstring is its --help description; one-line help)
    "run": (command_run, "fit the data sets of a config"),
    "simulate": (command_simulate, "write a synthetic data set from a config"),
    "validate": (command_validate, "check a config and its data; print the resolved config"),
    "init-config": (command_init_config, "write a commented config template"),
    "plot": (command_plot, "redraw the figures of a results folder"),
    "report": (command_report, "print a plain-text summary of a results folder"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``homodyne-mpi``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(parser, sys.argv[1:] if argv is None else list(argv)))
    from .logging_setup import configure_logging
    from .parallel import SerialComm, get_comm, run_guarded

    comm = get_comm() if args.command == "run" else SerialComm()
    configure_logging(comm.rank, comm.size, verbose=bool(getattr(args, "verbose", False)))
    if args.command != "run":
        from .parallel.devices import configure_host_devices

        configure_host_devices(1)
    return run_guarded(lambda: COMMANDS[args.command][0](args, comm), comm)


def console_main() -> None:
    """The ``homodyne-mpi`` console command: ``main``, then a prompt exit (``exit_process``)."""
    from .parallel.entry import exit_process

    exit_process(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()
