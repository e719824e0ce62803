import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats
import torch

from recvae.data.splits import HeldOut, Split
from recvae.evaluation import average_results, evaluate, evaluate_heldout, paired_comparison, top_k_for_rows


def _heldout(seed=0, n=40, items=30):
    rng = np.random.default_rng(seed)
    cells = rng.random((n, items))
    fold_in = sp.csr_matrix((cells < 0.2).astype(np.float32))
    target = sp.csr_matrix(((cells >= 0.2) & (cells < 0.3)).astype(np.float32))
    target = sp.csr_matrix(target.multiply(np.arange(n)[:, None] > 0))  # user 0 has no target
    target.eliminate_zeros()
    return HeldOut(fold_in, target, np.arange(100, 100 + n))


class _Oracle:
    """Scores exactly the target items highest, through the numpy path."""

    def __init__(self, target):
        self.target = target

    def score(self, rows):
        return self.target.toarray() + 0.0


def test_oracle_scores_one_and_empty_targets_are_excluded():
    held = _heldout()
    result = evaluate_heldout(_Oracle(held.target).score, held, ks=(5, 10))
    assert result["ndcg@10"] == pytest.approx(1.0) and result["recall@5"] == pytest.approx(1.0)
    empty = int((np.diff(held.target.indptr) == 0).sum())
    assert empty >= 1
    assert result.summary.loc["ndcg@10", "n_excluded"] == empty
    assert result.summary.loc["ndcg@10", "n_users"] == held.n_users - empty
    assert np.isnan(result.per_user["ndcg@10"].iloc[0])


def test_fold_in_items_are_never_ranked():
    held = _heldout()

    def loves_seen(rows):  # puts the user's own items first; the harness must mask them
        return torch.from_numpy(rows.toarray() * 10 + np.random.default_rng(0).random(rows.shape).astype(np.float32))

    top = top_k_for_rows(loves_seen, held.fold_in, 5, batch_size=7)
    assert held.fold_in[np.repeat(np.arange(held.n_users), 5), top.ravel()].sum() == 0


def test_numpy_and_torch_paths_agree():
    held = _heldout(1)
    scores = np.random.default_rng(2).random(held.fold_in.shape).astype(np.float32)
    a = evaluate_heldout(lambda rows: scores[: rows.shape[0]] if rows.shape[0] == len(scores) else None, held, ks=(5, 20), batch_size=10_000)
    b = evaluate_heldout(lambda rows: torch.from_numpy(scores.copy()), held, ks=(5, 20), batch_size=10_000)
    pd.testing.assert_frame_equal(a.summary, b.summary)


def test_evaluate_uses_the_requested_users_and_checks_arguments():
    # Validation and test users differ in ids and in rows, and the model's quality differs between them.
    val, test = _heldout(0), _heldout(1)
    test = HeldOut(test.fold_in, test.target, np.arange(500, 500 + test.n_users))
    split = Split(sp.csr_matrix((5, 30), dtype=np.float32), val, test, np.arange(30), np.arange(5), {"kind": "x"})

    class Model:
        def score(self, rows):  # an oracle for the test users' targets, noise for anyone else
            if rows.shape == test.fold_in.shape and (rows != test.fold_in).nnz == 0:
                return test.target.toarray() + 0.0
            return np.random.default_rng(0).random(rows.shape).astype(np.float32)

    for which, held in (("validation", val), ("test", test)):
        result = evaluate(Model(), split, which, ks=(10,))
        np.testing.assert_array_equal(result.per_user["user_id"], held.user_ids)
        np.testing.assert_array_equal(result.per_user["n_target"], np.diff(held.target.indptr))
        expected = evaluate_heldout(Model().score, held, ks=(10,))
        pd.testing.assert_frame_equal(result.summary, expected.summary)
    assert evaluate(Model(), split, ks=(10,))["ndcg@10"] == pytest.approx(1.0)  # the default is "test"
    assert evaluate(Model(), split, "validation", ks=(10,))["ndcg@10"] < 0.9
    with pytest.raises(ValueError, match="which"):
        evaluate(Model(), split, "train", ks=(10,))
    with pytest.raises(ValueError, match="k must lie"):
        evaluate(Model(), split, ks=(31,))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(Model(), split, ks=(10,), metrics=("auc",))


def test_paired_comparison_matches_scipy():
    held = _heldout(3)
    rng = np.random.default_rng(4)
    s1, s2 = rng.random(held.fold_in.shape), rng.random(held.fold_in.shape)
    a = evaluate_heldout(lambda r: s1.astype(np.float32), held, ks=(5, 20), batch_size=10_000)
    b = evaluate_heldout(lambda r: s2.astype(np.float32), held, ks=(5, 20), batch_size=10_000)
    out = paired_comparison(a, b, "ndcg@20")
    x, y = a.per_user["ndcg@20"].dropna(), b.per_user["ndcg@20"].dropna()
    assert out["n_users"] == len(x)
    assert out["t_pvalue"] == pytest.approx(scipy.stats.ttest_rel(x, y).pvalue)
    assert out["wilcoxon_pvalue"] == pytest.approx(scipy.stats.wilcoxon(x, y).pvalue)
    assert out["mean_diff"] == pytest.approx(x.mean() - y.mean())
    # 95% CI of the mean difference: +- 1.96 standard errors, std(ddof=1) / sqrt(n)
    half = 1.96 * np.std(x.to_numpy() - y.to_numpy(), ddof=1) / np.sqrt(len(x))
    assert out["diff_ci95_low"] == pytest.approx(x.mean() - y.mean() - half)
    assert out["diff_ci95_high"] == pytest.approx(x.mean() - y.mean() + half)
    with pytest.raises(KeyError, match="ndcg@7"):
        paired_comparison(a, b, "ndcg@7")


def test_average_results_averages_each_user_over_the_fits():
    """Seeds of one model: each user's metric is the mean over the fits; the summary is recomputed from those."""
    held = _heldout(5)
    rng = np.random.default_rng(6)
    runs = [evaluate_heldout(lambda r, s=rng.random(held.fold_in.shape): s.astype(np.float32), held, ks=(5, 20),
                             metrics=("ndcg", "recall", "coverage"), batch_size=10_000) for _ in range(3)]
    mean = average_results(runs)
    for metric in ("ndcg@5", "ndcg@20", "recall@20"):
        by_hand = np.mean([r.per_user[metric].to_numpy() for r in runs], axis=0)
        np.testing.assert_allclose(mean.per_user[metric].to_numpy(), by_hand)
        kept = by_hand[~np.isnan(by_hand)]
        # users without a target (user 0 among them) have no value in any fit, and none on average
        assert np.isnan(by_hand[0])
        assert mean.summary.loc[metric, "n_excluded"] == runs[0].summary.loc[metric, "n_excluded"]
        assert mean[metric] == pytest.approx(np.mean([r[metric] for r in runs]))  # = the mean of the fits' means
        assert mean.summary.loc[metric, "std_err"] == pytest.approx(kept.std() / np.sqrt(len(kept)))
    assert mean["coverage@20"] == pytest.approx(np.mean([r["coverage@20"] for r in runs]))
    np.testing.assert_array_equal(mean.per_user["n_target"], runs[0].per_user["n_target"])
    assert average_results(runs[:1]) is runs[0]
    other = evaluate_heldout(lambda r: np.ones(r.shape, np.float32), _heldout(5, n=39), ks=(5, 20), batch_size=10_000)
    with pytest.raises(ValueError, match="different users"):
        average_results([runs[0], other])
    with pytest.raises(ValueError, match="at least one"):
        average_results([])
