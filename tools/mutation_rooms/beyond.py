"""Room "beyond": beyond-accuracy metrics (novelty, intra-list diversity, ARP, long-tail share, Gini of
exposure) and their wiring into the harness, Run.evaluate, ``recvae evaluate`` and the experiment report
(issue 32, part 3). Caught by tests/test_beyond_accuracy.py, tests/test_beyond_accuracy_wiring.py,
tests/test_distributed.py and tests/test_experiment.py."""

BA = "recvae/evaluation/beyond_accuracy.py"
HARNESS = "recvae/evaluation/harness.py"
T_BA = ("tests/test_beyond_accuracy.py",)
T_WIRING = ("tests/test_beyond_accuracy_wiring.py",)

MUTATIONS = [
    dict(name="beyond-boundary-unseen-items-as-one-user", file=BA,
         old="counts = np.where(self.counts > 0, self.counts, UNSEEN_COUNT).astype(np.float64)",
         new="counts = np.where(self.counts > 0, self.counts, 1.0).astype(np.float64)",
         tests=T_BA, why="an item no training user has gets the novelty of an item one user has"),
    dict(name="beyond-boundary-head-drops-the-tied-threshold", file=BA,
         old="return (self.counts >= threshold) & (self.counts > 0)",
         new="return (self.counts > threshold) & (self.counts > 0)",
         tests=T_BA, why="the items at the 80% boundary count as long tail"),
    dict(name="beyond-rows-popularity-counts-weights", file=BA,
         old="out.data = np.ones(out.nnz, dtype=np.float32)",
         new="out.data = out.data.astype(np.float32)",
         tests=T_BA, why="co-occurrence cosines weighted by event values instead of distinct users"),
    dict(name="beyond-boundary-embedding-pairs-keep-self-terms", file=BA,
         old="pairs = (summed * summed).sum(axis=1) - own",
         new="pairs = (summed * summed).sum(axis=1)",
         tests=T_BA, why="each item's similarity with itself counted as a pair: diversity too low"),
    dict(name="beyond-direction-gini-sorted-descending", file=BA,
         old="values = np.sort(np.asarray(exposure, dtype=np.float64).ravel())",
         new="values = np.sort(np.asarray(exposure, dtype=np.float64).ravel())[::-1]",
         tests=T_BA, why="Gini of the exposures sorted the wrong way round (negative)"),
    dict(name="beyond-all-to-any-exposure-not-summed-over-ranks", file=HARNESS,
         old="return all_reduce_sum(torch.from_numpy(counts).to(ctx.device), ctx).cpu().numpy()",
         new="return counts",
         tests=("tests/test_distributed.py",), why="sharded Gini and coverage see one rank's lists"),
    dict(name="beyond-wiring-embeddings-ignored", file=HARNESS,
         old="train=train, item_embeddings=embeddings)",
         new="train=train, item_embeddings=None)",
         tests=T_BA + T_WIRING, why="diversity_space auto/embeddings silently measures co-occurrence"),
    dict(name="beyond-wiring-cli-diversity-space-dropped", file="recvae/cli/evaluate.py",
         old="metrics=metrics, diversity_space=args.diversity_space)",
         new="metrics=metrics)",
         tests=T_WIRING, why="recvae evaluate --diversity-space never reaches Run.evaluate"),
    dict(name="beyond-wiring-report-diversity-space-dropped", file="recvae/experiment/runner.py",
         old="metrics=names, diversity_space=config.diversity_space)",
         new="metrics=names)",
         tests=("tests/test_experiment.py",),
         why="the report's diversity is each model's embeddings, not co-occurrence"),
]
