"""The commented YAML template that ``homodyne-mpi init-config --mode MODE`` writes.

Every key of :class:`homodyne_mpi.config.HomodyneConfig` appears with its default (or a
typical value), its unit and its allowed values; the text loads back with
``load_config`` and validates (``tests/test_config.py`` checks both).
"""

from __future__ import annotations

from .config import DEFAULT_BOUNDS, PARAMETER_UNITS, PHYSICAL_PARAMETERS

# Typical starting values (and the truth that `simulate` uses), inside DEFAULT_BOUNDS.
_EXAMPLE_VALUES = {
    "D0": 1000.0,
    "alpha": 0.0,
    "D_offset": 0.0,
    "gamma_dot_t0": 0.01,
    "beta": 0.0,
    "gamma_dot_t_offset": 0.0,
    "phi0": 0.0,
}
_MEANING = {
    "D0": "D(t) = D0 * t^alpha + D_offset",
    "alpha": "exponent of D(t): 0 normal, < 0 sub-, > 0 super-diffusive",
    "D_offset": "constant part of D(t)",
    "gamma_dot_t0": "gamma_dot(t) = gamma_dot_t0 * t^beta + gamma_dot_t_offset",
    "beta": "exponent of the shear rate",
    "gamma_dot_t_offset": "constant part of the shear rate",
    "phi0": "flow direction relative to phi = 0",
    "contrast": "per-angle contrast",
    "offset": "per-angle baseline",
}
_PHI_RANGES = {
    "static": (False, [(-10.0, 10.0), (170.0, -170.0)]),
    "laminar_flow": (True, [(-10.0, 10.0), (80.0, 100.0), (170.0, -170.0)]),
}

_HEAD = """\
# =====================================================================================
# homodyne_mpi configuration -- analysis_mode: {mode}
# =====================================================================================
# Written by `homodyne-mpi init-config --mode {mode}`. Check an edited copy with
# `homodyne-mpi validate CONFIG` (prints the resolved config, defaults filled in).
#
# Units: times in seconds, lengths in Angstrom, q in 1/Angstrom, angles in degrees.
# `null` for a key with a default means that default. Numbers may be written 1e5.
# Relative data paths are read from this file's folder; output_dir is relative to the
# working directory.
# A config written for the reference `homodyne` package (v2.x) loads as it is: keys it
# has that this program does not use are listed once in the log as ignored.

# Model. static: D0, alpha, D_offset | laminar_flow: those and gamma_dot_t0, beta,
# gamma_dot_t_offset, phi0.
analysis_mode: {mode}

# Shear term of g1 (laminar_flow only): paper | homodyne-v2
#   paper:       g1 = g1_diff * sinc(Phi/2), the published equation (He et al. 2024)
#   homodyne-v2: g1 = g1_diff * sinc(Phi/(2 pi))^2, what the reference package computes;
#                reproduces its results (to 1e-9 relative)
shear_form: paper

analyzer_parameters:
  # Seconds per frame: a number > 0, or auto to read frame_time * stride_frame *
  # avg_frame from the HDF5 file.
  dt: auto
  # First frame to fit: 1-based, inclusive, integer >= 1.
  start_frame: 1
  # Last frame to fit: 1-based, inclusive, integer >= start_frame; null = the file's
  # last frame.
  end_frame: null
  scattering:
    # Wavevector magnitude q, 1/Angstrom, > 0; the file's q bin nearest to it is used.
    wavevector_q: 0.0054
  geometry:
    # Stator-rotor gap h of the shear cell, Angstrom, > 0 (200 micrometres = 2.0e6);
    # used by laminar_flow only.
    stator_rotor_gap: 2.0e6

experimental_data:
  # APS 8-ID-I two-time HDF5 file (APS-U or legacy layout, detected from its keys);
  # null when `datasets` below is used.
  file_path: ./data/experiment.hdf
  # Several datasets in one run (then file_path must be null): a list of
  #   file_path:    HDF5 file
  #   name:         results folder under output_dir (default: the file's name
  #                 without extension)
  #   wavevector_q: one q or a list of q, 1/Angstrom, > 0, one dataset per q, named
  #                 NAME_qVALUE (default: analyzer_parameters.scattering.wavevector_q)
  # for example
  #   datasets:
  #     - {{file_path: ./data/A.hdf, name: sample_A}}
  #     - {{file_path: ./data/B.hdf, wavevector_q: [0.0054, 0.0071]}}
  datasets: []

phi_filtering:
  # true: fit only the angles inside target_ranges; false: fit every angle in the file.
  enabled: {phi_enabled}
  # Inclusive ranges of the azimuthal angle phi, degrees in [-360, 360]. Angles compare
  # modulo 360; min_angle > max_angle wraps through 180 (170 .. -170 is 170 .. 190).
  target_ranges:
{phi_ranges}

initial_parameters:
  # Physical parameters in the order of `values` (canonical order shown):
{parameter_table}
  parameter_names: [{names}]
  # Starting values, one per name above, each inside its bounds; also the truth for
  # `homodyne-mpi simulate`. null = the middle of each parameter's bounds.
  values: [{values}]
  # Names from parameter_names held at their value in NLSQ and CMC, e.g. [{fixed_example}].
  fixed_parameters: []
  per_angle_scaling:
    # c2 = offset + contrast * g1^2 for each angle: individual | averaged | fixed
    #   individual: one contrast and one offset per angle, fitted (recommended:
    #               contrast differs between angle sectors)
    #   averaged:   one contrast and one offset shared by all angles, fitted
    #   fixed:      contrast and offset below, not fitted
    mode: individual
    # Starting (or fixed) contrast, in (0, 1]: one number for every angle, or a list
    # with one number per selected angle, e.g. [0.05, 0.06, 0.05].
    contrast: 0.5
    # Starting (or fixed) offset (baseline, near 1): one number or one per angle.
    offset: 1.0

parameter_space:
  # Bounds of each parameter (inclusive; min < max) and its CMC prior. A parameter not
  # listed gets the default bounds shown here. Per entry:
  #   name:        {all_names}
  #   min, max:    bounds, in the parameter's unit
  #   prior_mu:    prior mean; null = left to optimization.cmc.prior
  #   prior_sigma: prior width, > 0; null = left to optimization.cmc.prior
  #   type:        prior family: TruncatedNormal | Normal | Uniform (all kept in bounds)
  bounds:
{bounds}

optimization:
  # Which fit `homodyne-mpi run` does: nlsq | cmc | both (NLSQ, then CMC from it);
  # `run --method` overrides it.
  method: nlsq
  nlsq:
    # Weighted Levenberg-Marquardt over the upper triangle t1 < t2 of every c2.
    # Most iterations, integer >= 1.
    max_iterations: 100
    # Stop when the relative parameter step is below xtol (> 0).
    xtol: 1.0e-8
    # Stop when the scaled gradient is below gtol (> 0).
    gtol: 1.0e-8
    # Stop when the relative decrease of chi2 is below ftol (> 0).
    ftol: 1.0e-10
    # Residual loss: linear | soft_l1 | huber | cauchy (robust losses down-weight outliers).
    loss: linear
    # Residual size where a robust loss starts to down-weight, in units of the weighted
    # residual, > 0 (unused by linear).
    loss_scale: 1.0
    # Points per jitted chunk, integer >= 1; bounds the memory per rank.
    chunk_size: 8192
    # Before the fit, scan a coarse grid of physical starting values (D0, alpha,
    # gamma_dot_t0, phi0) on a subsample and start from the best: true | false.
    start_search: true
    # Points of that subsample (the same points on any number of ranks), integer >= 1000.
    search_points: 20000
    # Which standard error result.json reports as `std`: jackknife | model
    #   jackknife: delete-one-block jackknife over the points
    #   model:     from the covariance (J^T J)^-1 scaled by the reduced chi2
    uncertainty: jackknife
    # Blocks of the jackknife, integer >= 2.
    jackknife_blocks: 20
    # How the frames are cut into blocks: influence | equal
    #   influence: contiguous blocks that each carry about 1/K of the frames' lever on
    #              the physical parameters (short blocks where single frames weigh most)
    #   equal:     contiguous blocks of equal frame counts
    jackknife_blocking: influence
    # Iterations of each jackknife refit (started from the full fit), integer >= 1.
    jackknife_iterations: 20
    # How the refits use the ranks: points | replicates
    #   points:     all ranks work on each refit in turn, each on its own points
    #   replicates: each rank refits its share of the blocks on its own copy of all the
    #               points (no messages inside a refit; memory: all points on every rank)
    jackknife_parallel: points
  cmc:
    # Consensus Monte Carlo: NUTS on each shard of the data, then the shard posteriors
    # are combined. Global seed, integer in [0, 2^32); a shard's seed comes from
    # (seed, shard index), so results do not depend on the number of ranks.
    seed: 42
    sharding:
      # stratified (every shard holds every angle) | random (seeded random split).
      strategy: stratified
      # Number of shards: integer >= 1, or auto (from the two sizes below).
      num_shards: auto
      # Largest shard for the auto shard count: integer >= 1, or auto.
      max_points_per_shard: auto
      # Fewest points per fitted parameter in a shard (auto shard count), integer >= 1.
      min_points_per_parameter: 200
    per_shard_mcmc:
      # Warmup (adaptation) steps per chain, integer >= 1.
      num_warmup: 500
      # Kept samples per chain, integer >= 1.
      num_samples: 1000
      # Chains per shard, integer >= 1.
      num_chains: 4
      # parallel (one host device per chain) | sequential; parallel falls back to
      # sequential below 500 points per shard, with a warning.
      chain_method: parallel
      # NUTS target acceptance probability, in (0, 1).
      target_accept_prob: 0.8
      # A shard that fails the divergence or R-hat check below is sampled once more
      # with this target acceptance probability (smaller steps, longer trajectories),
      # in [0, 1); 0, or a value not above target_accept_prob, means no retry.
      retry_target_accept_prob: 0.95
      # NUTS tree depth limit (at most 2^depth leapfrog steps), integer in [1, 20].
      max_tree_depth: 10
      # Floors when warmup and samples are scaled down for a small shard (integers,
      # min_warmup >= 0, min_samples >= 1).
      min_warmup: 200
      min_samples: 300
      # Wall-time limit of one shard's sampling, seconds, > 0; null = no limit
      # (the reference package's optimization.cmc.per_shard_timeout maps here).
      shard_timeout_s: null
    combination:
      # consensus_mc | robust_consensus_mc | gaussian_product
      #   consensus_mc:        precision-weighted consensus of the shard draws
      #                        (Scott et al. 2016)
      #   robust_consensus_mc: the same after dropping outlying shards (outlier_zscore)
      #   gaussian_product:    product of Gaussian fits to the shard posteriors
      method: robust_consensus_mc
      # Fraction of shards that must pass the checks below, in (0, 1]; fewer is an error
      # naming the failed shards.
      min_success_rate: 0.8
      # Shards with a larger fraction of divergent transitions are left out, in (0, 1].
      max_divergence_rate: 0.10
      # Shards with a larger split R-hat are left out, > 1.
      max_rhat: 1.1
      # robust_consensus_mc leaves out shards this many robust (median/MAD) z-scores
      # from the median, > 0.
      outlier_zscore: 3.5
    prior:
      # Width of priors built from the NLSQ fit, in NLSQ standard errors, > 0.
      width_factor: 10.0
      # true: build priors from the NLSQ fit; false: use parameter_space priors as given.
      calibrate: true
    # Points of a two-time matrix share frames, so they carry less information than
    # their number says. true: divide the log-likelihood by the ratio of the NLSQ
    # jackknife to model variance, widened by Student's t at the jackknife's effective
    # degrees of freedom (median over the physical parameters, at least 1; docs/cmc.md),
    # so posterior widths match the data's real information; false: no tempering.
    calibrate: true

output:
  # Results root (relative to the working directory): one folder per dataset with
  # nlsq/ and cmc/ inside; `run --output-dir` overrides it.
  output_dir: ./homodyne_results
  # Write PNG plots (measured vs fitted c2, residuals, posterior marginals): true | false.
  plots: true

compute:
  # JAX persistent compilation cache folder (reused across runs); null disables it.
  compilation_cache_dir: "~/.cache/homodyne_mpi/jax"
"""


def build_template(mode: str) -> str:
    """The template text for ``mode`` (``static`` or ``laminar_flow``)."""
    names = PHYSICAL_PARAMETERS[mode]
    width = max(len(n) for n in DEFAULT_BOUNDS)
    parameter_table = "\n".join(f"  #   {n:<{width}}  {PARAMETER_UNITS[n]:<24}  {_MEANING[n]}" for n in names)
    bound_names = [*names, "contrast", "offset"]
    bounds = "\n".join(
        f"    - {{name: {n}, min: {_num(DEFAULT_BOUNDS[n][0])}, max: {_num(DEFAULT_BOUNDS[n][1])}, "
        f"prior_mu: null, prior_sigma: null, type: TruncatedNormal}}"
        for n in bound_names
    )
    enabled, ranges = _PHI_RANGES[mode]
    phi_ranges = "\n".join(f"    - {{min_angle: {lo}, max_angle: {hi}}}" for lo, hi in ranges)
    return _HEAD.format(
        mode=mode,
        phi_enabled="true" if enabled else "false",
        phi_ranges=phi_ranges,
        parameter_table=parameter_table,
        names=", ".join(names),
        values=", ".join(_num(_EXAMPLE_VALUES[n]) for n in names),
        fixed_example=names[-1],
        all_names=", ".join(bound_names),
        bounds=bounds,
    )


def _num(x: float) -> str:
    """A YAML number that reads back as a float: 100.0, 1.0e-06, 100000.0."""
    text = repr(float(x))
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        text = f"{mantissa}e{exponent}"
    return text
