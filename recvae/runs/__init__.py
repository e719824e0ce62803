"""A run: one model fitted on one interaction log, saved as a directory, served by user id.

This is the public API behind ``recvae train / tune / evaluate / recommend / embed /
similar / info``; everything the command line does can be done from here::

    from recvae.runs import LogSpec, Run, RunOutput, SplitSpec

    log = LogSpec("ratings.csv", rating_col="stars")                          # how to read the log
    run = Run.fit(log, "mult-vae", output="runs/tune")                         # held-out users pick the epoch
    prod = Run.fit(log, split=SplitSpec(heldout_users=0),                      # every user, every item
                   epochs_from="runs/tune", output="runs/prod")
    prod.recommend(["u1", "u2"], k=10, exclude=["m3"])                         # by raw user id
    prod.recommend_all("recs.parquet", k=100)                                  # every user, streamed
    prod.embed_users().head()                                                  # user_id, mu_*, sigma_*

Outputs name the ids as the log did (``customer, rank, product, score`` for a log with
those columns); ``id_columns="fixed"`` gives ``user_id`` / ``item_id`` (:mod:`~recvae.runs.id_columns`).
``recommend_all`` lists the users preprocessing dropped beside its file (``recs.dropped-users.csv``).
    prod.similar_items(["m1"], k=5)

:func:`tune` (``recvae tune``) reads and splits a log the same way and searches a
model's hyper-parameters on the validation users (:func:`recvae.tuning.optuna_search`).

The rooms: :mod:`~recvae.runs.fitting` (read, split, fit, evaluate, describe),
:mod:`~recvae.runs.directory` (the run directory on disk: files, manifest,
atomic write, lock, checked load), :mod:`~recvae.runs.queries` (recommend,
embed, similar items by raw id), :mod:`~recvae.runs.search` (tuning on a log)
and :mod:`~recvae.runs.run` (the :class:`Run` that ties them together).

"Already seen" for recommendations served to users means every raw
interaction of the user in the log, ratings under the positive threshold and
duplicates included. The evaluation protocol is untouched: :meth:`Run.evaluate`
masks exactly the fold-in positives, as Liang et al. do.
"""

from recvae.data.specs import LIANG_SEED, LogSpec, SplitSpec, default_heldout_users
from recvae.runs.directory import RunOutput
from recvae.runs.errors import RunError
from recvae.runs.queries import SkippedUsers
from recvae.runs.run import Run
from recvae.runs.search import tune

__all__ = ["Run", "RunError", "RunOutput", "LogSpec", "SplitSpec", "SkippedUsers", "default_heldout_users", "tune",
           "LIANG_SEED"]
