"""``python -m colocate`` is the ``colocate`` command."""

from colocate.cli import main

raise SystemExit(main())
