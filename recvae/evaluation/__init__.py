"""Evaluation: ranking metrics as pure functions (:mod:`recvae.evaluation.metrics`) and the harness
that folds held-out users in, masks their fold-in items, ranks the full catalogue and measures
(:mod:`recvae.evaluation.harness`). It takes score functions, so the training loops use it too.
"""

from recvae.evaluation import metrics
from recvae.evaluation.harness import (
    EvaluationResult,
    average_results,
    evaluate,
    evaluate_heldout,
    paired_comparison,
    top_k_for_rows,
)

__all__ = ["metrics", "EvaluationResult", "average_results", "evaluate", "evaluate_heldout", "paired_comparison",
           "top_k_for_rows"]
