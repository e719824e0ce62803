"""Mutations per room, read by tools/mutate.py (``room_mutations``): one file per room, each a
``MUTATIONS`` list of dicts with the fields of ``tools/mutate.py``'s ``Mutation`` (name, file,
old, new, tests, why), named ``<room>-<class>-<what>`` with the class one of
``wiring`` (an option dropped on its way to the library), ``rows`` (rows swapped or misaligned),
``boundary`` (off by one at a limit), ``direction`` (a comparison or order flipped),
``stale-cache`` (a derivative kept across a refit) and ``all-to-any`` (a check weakened)."""
