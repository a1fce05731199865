"""Everything that touches MPI: the Comm abstraction, device setup, guarded entry."""

from .comm import Comm, MPIComm, SerialComm, get_comm
from .devices import configure_host_devices, enable_compilation_cache, with_host_device_count
from .entry import failure_message, run_guarded
from .partition import balanced_counts

__all__ = [
    "Comm",
    "MPIComm",
    "SerialComm",
    "balanced_counts",
    "configure_host_devices",
    "enable_compilation_cache",
    "failure_message",
    "get_comm",
    "run_guarded",
    "with_host_device_count",
]
