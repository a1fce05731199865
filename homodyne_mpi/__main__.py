"""``python -m homodyne_mpi`` is the ``homodyne-mpi`` command."""

from .cli import main

raise SystemExit(main())
