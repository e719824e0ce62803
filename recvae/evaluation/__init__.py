"""Evaluation: ranking metrics as pure functions (:mod:`recvae.evaluation.metrics`), beyond-accuracy
metrics of the lists (novelty, diversity, popularity bias, exposure:
:mod:`recvae.evaluation.beyond_accuracy`), top-k over item blocks within a memory budget
(:mod:`recvae.evaluation.ranking`) and the harness that folds held-out users in, masks their
fold-in items, ranks the full catalogue and measures (:mod:`recvae.evaluation.harness`). It
takes score functions, so the training loops use it too.
"""

from recvae.evaluation import beyond_accuracy, metrics, ranking
from recvae.evaluation.beyond_accuracy import (
    ItemPopularity,
    arp_at_k,
    gini_at_k,
    intra_list_diversity_at_k,
    long_tail_at_k,
    novelty_at_k,
)
from recvae.evaluation.harness import (
    DIVERSITY_SPACES,
    METRIC_NAMES,
    EvaluationResult,
    average_results,
    evaluate,
    evaluate_heldout,
    evaluate_model,
    metric_columns,
    paired_comparison,
    top_k_for_rows,
)

__all__ = ["metrics", "ranking", "beyond_accuracy", "EvaluationResult", "average_results", "evaluate",
           "evaluate_heldout", "evaluate_model", "paired_comparison", "top_k_for_rows", "metric_columns", "METRIC_NAMES",
           "DIVERSITY_SPACES", "ItemPopularity", "novelty_at_k", "intra_list_diversity_at_k", "arp_at_k", "long_tail_at_k", "gini_at_k"]
