"""Evaluation: ranking metrics as pure functions (:mod:`recvae.evaluation.metrics`), top-k over
item blocks within a memory budget (:mod:`recvae.evaluation.ranking`) and the harness that folds
held-out users in, masks their fold-in items, ranks the full catalogue and measures
(:mod:`recvae.evaluation.harness`). It takes score functions, so the training loops use it too.
"""

from recvae.evaluation import metrics, ranking
from recvae.evaluation.harness import (
    EvaluationResult,
    average_results,
    evaluate,
    evaluate_heldout,
    evaluate_model,
    paired_comparison,
    top_k_for_rows,
)

__all__ = ["metrics", "ranking", "EvaluationResult", "average_results", "evaluate", "evaluate_heldout", "evaluate_model", "paired_comparison",
           "top_k_for_rows"]
