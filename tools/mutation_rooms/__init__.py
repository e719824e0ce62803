"""Mutations per room, read by tools/mutate.py (``room_mutations``): one file per room, each a
``MUTATIONS`` list of dicts with the fields of ``tools/mutate.py``'s ``Mutation`` (name, file,
old, new, tests, why), named ``<room>-<class>-<what>`` with the class one of
``wiring`` (an option dropped on its way to the library), ``rows`` (rows swapped or misaligned),
``boundary`` (off by one at a limit), ``direction`` (a comparison or order flipped),
``stale-cache`` (a derivative kept across a refit), ``all-to-any`` (a check weakened) and
``errors`` (an exception swallowed, or a failed write's leftovers kept).

``python tools/mutate.py --rooms-from FILE`` runs one such file kept elsewhere (e.g. a blind set
written before reading the tests) instead of the built-in mutations."""
