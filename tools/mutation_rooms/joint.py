"""Room "joint": the joint VAE + item-item model's options on their way to the network and the fit
(recvae/nn/joint.py, recvae/models/joint.py) -- the closed-form start, train_linear and its weight
decay, the starting scale, the linear path's input dropout, vae_loss_weight, fusion_gradient, the
memory check, block_score_bytes and a refit's start. Caught by tests/test_joint_wiring.py, whose
oracles are a float64 numpy EDLAE, dense ``D mu + b + s · x W`` and a hand multinomial NLL."""

NN = "recvae/nn/joint.py"
MODEL = "recvae/models/joint.py"
T = ("tests/test_joint_wiring.py", "tests/test_joint.py", "tests/test_joint_sparse.py")
SPARSE_T = ("tests/test_joint_sparse.py",)
SPARSE = "recvae/nn/sparse_item_item.py"

MUTATIONS = [
    dict(name="joint-wiring-edlae-start-drops-dropout", file=MODEL,
         old="weights = edlae_weights(matrix, config.linear_l2, config.linear_dropout)",
         new="weights = edlae_weights(matrix, config.linear_l2, 0.0)",
         tests=T, why="the closed-form start is EASE's whatever linear_dropout says"),
    dict(name="joint-wiring-train-linear-ignored", file=NN,
         old="trainable=config.train_linear and config.paths != \"vae\",",
         new="trainable=config.paths != \"vae\",",
         tests=T, why="W is always trained: train_linear=False no longer keeps the closed form fixed"),
    dict(name="joint-wiring-linear-weight-decay-dropped", file=NN,
         old="weight_decay=config.linear_weight_decay)",
         new="weight_decay=0.0)",
         tests=T, why="a trained W gets no L2 decay whatever linear_weight_decay says"),
    dict(name="joint-wiring-linear-scale-ignored", file=NN,
         old="self.base_scale = float(config.linear_scale)",
         new="self.base_scale = 10.0",
         tests=T, why="s always starts at the default 10, not at linear_scale"),
    dict(name="joint-all-to-any-linear-dropout-in-eval", file=NN,
         old="if not (self.training and p and self.config.paths != \"vae\"):",
         new="if not (p and self.config.paths != \"vae\"):",
         tests=T, why="the linear path's input dropout also applies in eval mode (validation losses are noisy)"),
    dict(name="joint-wiring-vae-loss-weight-as-a-flag", file=NN,
         old="nll = nll + c.vae_loss_weight * self.likelihood.nll(latent, x)",
         new="nll = nll + self.likelihood.nll(latent, x)",
         tests=T, why="vae_loss_weight only switches the latent NLL on; its value is lost"),
    dict(name="joint-direction-fusion-gradient-inverted", file=NN,
         old="fused = latent if c.fusion_gradient else latent.detach()",
         new="fused = latent.detach() if c.fusion_gradient else latent",
         tests=T, why="fusion_gradient=False lets the joint NLL train the VAE, True cuts it"),
    dict(name="joint-boundary-memory-check-refuses-at-equality", file=MODEL,
         old="fits = need <= memory.WARN_FRACTION * have",
         new="fits = need < memory.WARN_FRACTION * have",
         tests=T, why="linear_form='auto' turns sparse for a dense W that takes exactly half the memory"),
    dict(name="joint-rows-block-score-bytes-per-item", file=MODEL,
         old="return 4.0 * user_rows.nnz / max(1, user_rows.shape[0])",
         new="return 4.0 * user_rows.nnz / max(1, user_rows.shape[1])",
         tests=T, why="the block planner's per-cell bytes average nnz over items, not users: it undercounts"),
    dict(name="joint-stale-cache-refit-keeps-the-first-start", file=MODEL,
         old="            if config.linear_init == \"edlae\":\n",
         new="            if config.linear_init == \"edlae\" and getattr(self, \"linear_start_\", None) is not None \\\n"
             "                    and self.linear_start_.shape == matrix.shape[1:] * 2:\n"
             "                self.net_.decoder.item_item.set_weight(torch.from_numpy(self.linear_start_))\n"
             "            elif config.linear_init == \"edlae\":\n"
             "                self.linear_start_ = edlae_weights(matrix, config.linear_l2, config.linear_dropout)\n",
         tests=T, why="the closed-form start is cached on the model: a refit on other data of the same width "
                      "starts W from the first data"),
    # ------------------------------------------------------------------ the sparse form (issue 30)
    dict(name="joint-boundary-sparse-block-drops-its-last-column", file=SPARSE,
         old="hi = torch.searchsorted(keys, items * self.n_items + stop)",
         new="hi = torch.searchsorted(keys, items * self.n_items + stop - 1)",
         tests=SPARSE_T, why="a block of x W (chunked loss, block scoring) misses the weights of its last column"),
    dict(name="joint-wiring-sampled-joint-nll-drops-the-linear-logits", file=NN,
         old="extra_logits=lambda items: scale * item_item.at(x, values, items))",
         new="extra_logits=None)",
         tests=SPARSE_T, why="under sampled softmax the joint NLL is the latent path's alone: W and s never learn"),
    dict(name="joint-all-to-any-chunked-multinomial-sums-block-normalisers", file="recvae/nn/joint_output.py",
         old="return x.row_sums().float() * torch.logsumexp(torch.stack(dense), dim=0) - data_term",
         new="return x.row_sums().float() * torch.stack(dense).sum(dim=0) - data_term",
         tests=SPARSE_T, why="the chunked joint NLL adds the blocks' log-normalisers instead of log-sum-exp-ing them"),
    dict(name="joint-wiring-sparse-start-drops-edlae-dropout", file="recvae/models/sparse_ease.py",
         old="diagonal = gram.diagonal().astype(np.float64) / (1.0 - dropout)",
         new="diagonal = gram.diagonal().astype(np.float64)",
         tests=SPARSE_T, why="the sparse form's start ignores linear_dropout (EASE, not EDLAE)"),
    dict(name="joint-wiring-load-skips-the-csr-check", file=MODEL,
         old="        if problem:\n            raise ModelFileError(f\"{path}: {problem}; {MODEL_FIX}\")\n",
         new="",
         tests=SPARSE_T, why="a saved sparse W with out-of-range columns or a stored diagonal loads"),
]
