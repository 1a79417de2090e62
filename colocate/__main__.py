"""``python -m colocate`` is the ``colocate`` command."""

from .cli import main

raise SystemExit(main())
