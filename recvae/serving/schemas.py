"""The JSON bodies of the HTTP server (:mod:`recvae.serving.server`): pydantic models, the ``serve`` extra.

Requests refuse fields they do not know (``extra="forbid"``: a misspelt option is a 422, not ignored);
ids are strings or numbers, looked up as :class:`recvae.runs.Run` does. Every answer carries
``run_id``, the id of the run that computed it (see :func:`recvae.serving.service.run_identity`),
so a client sees a reload swap the run.
"""

from __future__ import annotations

from typing import Literal, Union

try:
    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
except ImportError:  # the optional ``serve`` extra is not installed: recvae.serving.server says so
    HAVE_PYDANTIC = False
else:
    HAVE_PYDANTIC = True

#: How an unknown or cold user was answered (``fallback_reason``): the posted ``items`` folded in as a
#: new user, or the popularity ranking of the run's training matrix.
FALLBACK_REASONS = ("fold-in", "popularity")

#: The posterior fields of the recommend requests (VAE family; see :mod:`recvae.models.posterior`).
EXPLORE = ("t >= 0: rank from a posterior sample z = mu + t*sigma*eps instead of mu (VAE family; 0: the usual "
           "ranking; other models refuse t > 0 with 422); a popularity fallback ignores it")
SEED = "the draw of explore: the same seed, the same list for the same user"
UNCERTAINTY = "also answer the user's mean posterior sigma (VAE family; other models answer 422)"

if HAVE_PYDANTIC:
    RawId = Union[StrictStr, StrictInt, StrictFloat]
    FallbackReason = Literal["fold-in", "popularity"]

    class _Body(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class RecommendRequest(_Body):
        user_id: RawId = Field(description="a raw user id of the run's log")
        k: StrictInt = Field(10, description="items to return (1 .. the number of items)")
        exclude: list[RawId] | None = Field(None, description="raw item ids never to recommend")
        candidates: list[RawId] | None = Field(None, description="the only raw item ids that may be recommended")
        filter_seen: bool = Field(True, description="never recommend items the user interacted with in the log")
        items: list[RawId] | None = Field(
            None, description="the user's own raw item ids, folded in when the run does not know the user (the "
                              "fallback); ids not in the catalogue are ignored (counted in items_used); a known "
                              "user is scored from the run's history")
        explore: float = Field(0.0, ge=0, description=EXPLORE)
        seed: StrictInt = Field(0, ge=0, description=SEED)
        uncertainty: bool = Field(False, description=UNCERTAINTY)

    class NewUserRequest(_Body):
        item_ids: list[RawId] = Field(description="raw item ids of the new user's history (folded in)")
        weights: list[StrictFloat] | None = Field(
            None, description="one positive weight per item id (default: each 1, an id given twice counts once; "
                              "with weights an id given twice adds its weights)")
        k: StrictInt = 10
        exclude: list[RawId] | None = None
        candidates: list[RawId] | None = None
        explore: float = Field(0.0, ge=0, description=EXPLORE)
        seed: StrictInt = Field(0, ge=0, description=SEED)
        uncertainty: bool = Field(False, description=UNCERTAINTY)

    class SimilarRequest(_Body):
        item_id: RawId
        k: StrictInt = 10

    class BatchRequest(_Body):
        user_ids: list[RawId] = Field(description="raw user ids of the run's log, scored together")
        k: StrictInt = 10
        exclude: list[RawId] | None = None
        candidates: list[RawId] | None = None
        filter_seen: bool = True
        explore: float = Field(0.0, ge=0, description=EXPLORE)
        seed: StrictInt = Field(0, ge=0, description=SEED)
        uncertainty: bool = Field(False, description=UNCERTAINTY)

    class ReloadRequest(_Body):
        run: StrictStr | None = Field(None, description="the run directory to serve next (default: the one "
                                                         "the server was started with, read again)")

    class RankedItem(BaseModel):
        rank: int
        item_id: RawId
        score: float

    class RecommendResponse(BaseModel):
        user_id: RawId
        items: list[RankedItem]
        fallback: bool = Field(False, description="true when the run has no history for the user (unknown, "
                                                  "dropped by preprocessing, or no training items)")
        fallback_reason: FallbackReason | None = Field(
            None, description="how a fallback was answered: 'fold-in' (the posted items, as /recommend/new-user) "
                              "or 'popularity' (the training matrix's item counts); null for known users")
        items_used: int | None = Field(None, description="posted items the fold-in used (known, distinct); "
                                                         "null for known users")
        uncertainty: float | None = Field(None, description="the user's mean posterior sigma when asked "
                                                            "(uncertainty=true); null otherwise and for fallbacks")
        run_id: str = Field(description="the run that answered")

    class BatchResponse(BaseModel):
        results: list[RecommendResponse]
        missing: list[str] = Field(description="requested ids the run has no history for (unknown, dropped by "
                                               "preprocessing, no training items); answered by popularity, "
                                               "flagged, unless the server answers those with 404")
        run_id: str

    class NewUserResponse(BaseModel):
        items: list[RankedItem]
        uncertainty: float | None = Field(None, description="the new user's mean posterior sigma when asked")
        run_id: str

    class SimilarResponse(BaseModel):
        item_id: RawId
        items: list[RankedItem]
        run_id: str

    class HealthResponse(BaseModel):
        status: str
        run_id: str

    class ReloadResponse(BaseModel):
        run_id: str = Field(description="the run now serving")
        previous_run_id: str
        path: str
        model: str | None
        users: int
        items: int

    class InfoResponse(BaseModel):
        run_id: str
        path: str | None
        model: str | None
        model_class: str
        users: int
        items: int
        version: str
        micro_batching: bool
        max_batch: int
        max_wait_ms: float
        unknown_users: str = Field(description="'fallback' (flagged answers) or '404'")
        allow_reload: bool = Field(description="whether POST /admin/reload is on")
        reloads: int = Field(0, description="runs swapped in since the start (endpoint or SIGHUP)")
        last_reload_error: str | None = Field(None, description="why the last reload was refused; null when it succeeded (or none was tried)")
        batches: int | None = Field(None, description="micro-batches scored so far (this process)")
        batched_requests: int | None = Field(None, description="/recommend requests they answered")
        max_queue: int | None = Field(None, description="most requests waiting to be scored; more answer 503")
        refused: int | None = Field(None, description="requests refused with 503 so far (this process)")
