"""What every benchmark in ``bench/`` is built from; nothing here is run on its own.

- :mod:`bench.harness.loadgen`: the HTTP load generator, a separate process, and its driver.
- :mod:`bench.harness.cpu`: CPU time of this process, of PostgreSQL and of everything else.
- :mod:`bench.harness.databases`: scratch databases, each quiesced before a timed window.
- :mod:`bench.harness.service`: the service's files and config, run in-process or as
  ``pcns serve``.
- :mod:`bench.harness.backlog`: queued work, through the service's intake or by ``COPY``.
- :mod:`bench.harness.report`: medians with ``[min..max]``, ratios, CPU lines, the table.
- :mod:`bench.harness.history`: a million-row queue of history, built by ``INSERT ... SELECT``.
- :mod:`bench.harness.sustained`: a load left running while something else is measured.
- :mod:`bench.harness.plans`: the scan nodes of a statement's plan, for a report.
- :mod:`bench.harness.run`: the flags every benchmark takes and the environment it runs in.
- :mod:`bench.harness.fleet`: receiver and worker processes on one queue, SIGKILLed and
  restarted (the kill -9 soak, ``bench.soak``).
- :mod:`bench.harness.signed_load`: a steady signed load that records every 202.
- :mod:`bench.harness.soak_targets`, :mod:`bench.harness.soak_history`,
  :mod:`bench.harness.soak_report`: the soak's targets read back with their own tools, its
  history check, its summary.
- :mod:`bench.harness.pgcluster`: a private PostgreSQL cluster (a primary, synchronous
  standbys) that can be crashed, restarted and failed over; the database-fault tests use it too.
- :mod:`bench.harness.hash_alone`: hashes made alone, as a worker's hashing pool makes them.
"""
