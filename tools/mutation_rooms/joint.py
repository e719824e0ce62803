"""Room "joint": the joint VAE + item-item model's options on their way to the network and the fit
(recvae/nn/joint.py, recvae/models/joint.py) -- the closed-form start, train_linear and its weight
decay, the starting scale, the linear path's input dropout, vae_loss_weight, fusion_gradient, the
memory check, block_score_bytes and a refit's start. Caught by tests/test_joint_wiring.py, whose
oracles are a float64 numpy EDLAE, dense ``D mu + b + s · x W`` and a hand multinomial NLL."""

NN = "recvae/nn/joint.py"
MODEL = "recvae/models/joint.py"
T = ("tests/test_joint_wiring.py", "tests/test_joint.py")

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
         old="if need > have:",
         new="if need >= have:",
         tests=T, why="a W that fits exactly is refused"),
    dict(name="joint-rows-block-score-bytes-per-item", file=MODEL,
         old="return 4.0 * user_rows.nnz / max(1, user_rows.shape[0])",
         new="return 4.0 * user_rows.nnz / max(1, user_rows.shape[1])",
         tests=T, why="the block planner's per-cell bytes average nnz over items, not users: it undercounts"),
    dict(name="joint-stale-cache-refit-keeps-the-first-start", file=MODEL,
         old="            if config.linear_init == \"edlae\":\n",
         new="            if config.linear_init == \"edlae\" and getattr(self, \"linear_start_\", None) is not None \\\n"
             "                    and self.linear_start_.shape == (n_items, n_items):\n"
             "                self.net_.decoder.item_item.set_weight(torch.from_numpy(self.linear_start_))\n"
             "            elif config.linear_init == \"edlae\":\n"
             "                self.linear_start_ = edlae_weights(matrix, config.linear_l2, config.linear_dropout)\n",
         tests=T, why="the closed-form start is cached on the model: a refit on other data of the same width "
                      "starts W from the first data"),
]
