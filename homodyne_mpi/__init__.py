"""homodyne_mpi: MPI fitting of XPCS two-time correlations to the transport-coefficient model.

The package imports nothing heavy at the top level so that the device setup in
``homodyne_mpi.parallel.devices`` can set XLA flags before JAX is imported.
"""

__version__ = "0.1.0"
