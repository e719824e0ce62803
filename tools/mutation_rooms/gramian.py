"""Room "gramian": the confidence-weighted Gaussian likelihood, its Gramian form, the exact posterior of a
linear Gaussian decoder and its kept Gramian, the exact refinement of its decoder, and the weighted VAE's wiring (issue 30). Caught by
tests/test_gramian.py."""

LIK = "recvae/nn/likelihoods.py"
GRAM = "recvae/nn/gramian.py"
VAE = "recvae/nn/vae.py"
MODELS = "recvae/models/mult_vae.py"
T = ("tests/test_gramian.py",)

MUTATIONS = [
    dict(name="gramian-wiring-confidence-ignored", file=LIK,
         old="return self.entry_weights(values) * (values - means).square() - means * means",
         new="return (values - means).square() - means * means",
         tests=T, why="the observed entries weigh 1, not 1 + alpha x: the plain Gaussian under another name"),
    dict(name="gramian-direction-weights-normaliser-sign", file=LIK,
         old="return const - 0.5 * torch.zeros(",
         new="return const + 0.5 * torch.zeros(",
         tests=T, why="the weighted Gaussian's normaliser counted with the wrong sign"),
    dict(name="gramian-rows-cross-term-dropped", file=GRAM,
         old="all_items = ((h @ gram) * h).sum(dim=1) - 2.0 * (h @ base) + bias.square().sum()",
         new="all_items = ((h @ gram) * h).sum(dim=1) + bias.square().sum()",
         tests=T, why="the all-items sum forgets the bias-times-mean term"),
    dict(name="gramian-rows-posterior-ignores-the-extra-confidence", file=GRAM,
         old="scaled = picked * extra[entries, None].sqrt()",
         new="scaled = picked",
         tests=T, why="each observed item weighs 1 extra instead of alpha x in the posterior precision"),
    dict(name="gramian-boundary-posterior-block-offset", file=GRAM,
         old="local = rows[entries] - start_user",
         new="local = rows[entries] - start_user * (start_user > 0 and budget > 1)",
         tests=T, why="users of a later block solved with the wrong rows (small budgets only)"),
    dict(name="gramian-stale-cache-kept-through-training", file=VAE,
         old="""        self._gramian_cache = None
        return super().train(mode)""",
         new="""        return super().train(mode)""",
         tests=T, why="validation after a fused-Adam step scores with the Gramian of the first epoch"),
    dict(name="gramian-wiring-exact-posterior-in-training", file=VAE,
         old='if self.config.posterior == "exact" and not self.training:',
         new='if self.config.posterior == "exact":',
         tests=T, why="training reads the exact posterior: the encoder never learns and no gradient reaches it"),
    dict(name="gramian-direction-refine-ridge-without-the-variance", file=GRAM,
         old="moments.sum(dim=0).reshape(d, d) + likelihood.variance * l2 * torch.eye",
         new="moments.sum(dim=0).reshape(d, d) + l2 * torch.eye",
         tests=T, why="the item ridge forgets that the likelihood's precision is 1 / sigma^2"),
    dict(name="gramian-rows-refine-unobserved-cells-dropped", file=GRAM,
         old="rhs = by_item(target) @ mu - offset[start:stop]",
         new="rhs = by_item(target) @ mu",
         tests=T, why="each item's target forgets the unobserved cells' pull towards -b_i"),
    dict(name="gramian-rows-refine-point-estimates", file=GRAM,
         old="""moments[block.users] = (torch.cholesky_inverse(block.chol)
                                    + block.mu""",
         new="""moments[block.users] = (0 * torch.cholesky_inverse(block.chol)
                                    + block.mu""",
         tests=T, why="the M-step uses mu mu^T without the posterior covariance: ALS, not EM"),
    dict(name="gramian-wiring-refine-steps-ignored", file=MODELS,
         old="        if self.config.refine_steps:\n            result.refinement",
         new="        if False:\n            result.refinement",
         tests=T, why="refine_steps is accepted and saved but the decoder is never refined"),
    dict(name="gramian-wiring-refine-l2-ignored", file=MODELS,
         old="l2=self.config.refine_l2,",
         new="l2=1.0,",
         tests=T, why="the refinement always uses the default penalty"),
]

WVAE = "recvae/models/weighted_vae.py"
REFINE = "recvae/training/refine.py"
PATH_T = ("tests/test_weighted_vae_item_path.py",)
MUTATIONS += [
    dict(name="gramian-wiring-item-path-not-scored", file=WVAE,
         old="scores = scores + self.item_scale_ * self.item_path_(x)",
         new="scores = scores",
         tests=PATH_T, why="the fitted item-item path never reaches score / evaluate"),
    dict(name="gramian-wiring-item-path-not-in-blocks", file=WVAE,
         old="        return h, weight, bias, linear\n",
         new="        return h, weight, bias, None\n",
         tests=PATH_T, why="block scoring (recommend, serving) ranks without the path that score() adds"),
    dict(name="gramian-wiring-item-path-not-saved", file=WVAE,
         old="        if self.item_path_ is None:\n            return {}",
         new="        if True:\n            return {}",
         tests=PATH_T, why="a saved model loads without its item-item path and scores differently"),
    dict(name="gramian-rows-item-scale-observed-correction-dropped", file=REFINE,
         old="            - float(((confidence - 1.0) * observed_m * observed_o).sum())",
         new="",
         tests=PATH_T, why="the scale's residual forgets the observed cells' extra confidence on the means"),
    dict(name="gramian-stale-cache-item-path-kept-through-refit", file=WVAE,
         old="        self.item_path_, self.item_scale_ = None, 0.0  # the epochs validate the VAE alone\n",
         new="",
         tests=PATH_T, why="a refit's epochs validate with the earlier fit's item-item path"),
]
