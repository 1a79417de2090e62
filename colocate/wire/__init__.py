"""What crosses between colocate's processes: the records, their framing, and the links.

Every process imports this package; nothing here runs a loop of its own. Each arrow below is
labelled by the module that carries it::

                      wire.stream (TCP, framed pickles; opened by wire.bell's handshake)
   client  ─────────────────────────────────────────────────────────►  rank 0
   (client/)  ◄── Welcome, Results, PutReply, Lease, StatusReply ────  (rank0/)
      │                                                                 │  ▲
      │ wire.stream to a leased worker's task port (worker.lease)       │  │ wire.mpi (Mailbox:
      │                                                                 │  │ Dispatch, Done, ...)
      ▼                                                                 ▼  │ + wire.bell (wake-ups,
   worker rank  ◄──────────────────────────────────────────────────────────┘  liveness)
   (worker/)                                                            ▲
      │ wire.pipe (framed pickles over two pipes: Work ─► , ◄─ Outcome)  │ wire.stream: a joined
      ▼                                                                 │ worker (worker.joined)
   executor child (child/)                                         joined worker (worker/)

   client or child ── store.datalink (TCP or shared memory) ──► a worker's data port (store.server)
   anyone ── wire.address (the address file: host, port, token, wire version) ──► finds rank 0

- :mod:`~colocate.wire.messages`: the records, the plain-tuple wire form of the hot ones, pickling
  helpers, the function cache key, remote tracebacks. Add a new message here, with its reader in
  ``rank0/loop.py`` and ``worker/loop.py`` (or ``client/connection.py``).
- :mod:`~colocate.wire.stream`: non-blocking framed pickles over TCP.
- :mod:`~colocate.wire.pipe`: framed pickles over the worker's pipes to its child.
- :mod:`~colocate.wire.bell`: the TCP socket beside each MPI link, and the token handshake.
- :mod:`~colocate.wire.mpi`: the only module that imports ``mpi4py.MPI``.
- :mod:`~colocate.wire.address`: the address file.

A new kind of link between rank 0 and a worker implements the two faces a worker loop uses (a
mailbox and a bell), as :class:`colocate.worker.joined.StreamLink` does for TCP.
"""
