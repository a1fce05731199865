"""``python -m homodyne_mpi`` is the ``homodyne-mpi`` command."""

from .cli import console_main

console_main()
