"""What the models and loops run on: processes and devices, and the files they trust.

- :mod:`recvae.runtime.distributed`: torch.distributed glue (rank contexts, batch
  sharding, all-reduce, gathering rows, torchrun launch).
- :mod:`recvae.runtime.storage`: checks of model files and checkpoints before torch or
  numpy reads them (zip CRCs, no pickles, required keys, shapes).
- :mod:`recvae.runtime.memory`: the memory available and the one-line refusal every
  model gives before an allocation that would not fit (:func:`require_memory`).

It sits under every layer that computes (evaluation, training, models, runs) and
imports only :mod:`recvae.data`.
"""
