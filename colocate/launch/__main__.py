"""``python -m colocate.launch pin|plan|with|attach``: the launchers' I/O side (:mod:`.run`)."""

from colocate.launch.run import main

raise SystemExit(main())
