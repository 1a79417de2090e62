"""``python -m colocate.child``: the executor child's entry point (:func:`colocate.child.main`)."""

from colocate.child import main

main()
