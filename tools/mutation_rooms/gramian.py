"""Room "gramian": the confidence-weighted Gaussian likelihood, its Gramian form, the exact posterior of a
linear Gaussian decoder and its kept Gramian, and the weighted VAE's wiring (issue 30). Caught by
tests/test_gramian.py."""

LIK = "recvae/nn/likelihoods.py"
GRAM = "recvae/nn/gramian.py"
VAE = "recvae/nn/vae.py"
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
         old="scaled = picked * extra[start_entry:stop_entry, None].sqrt()",
         new="scaled = picked",
         tests=T, why="each observed item weighs 1 extra instead of alpha x in the posterior precision"),
    dict(name="gramian-boundary-posterior-block-offset", file=GRAM,
         old="local = rows[start_entry:stop_entry] - start_user",
         new="local = rows[start_entry:stop_entry] - start_user * (start_user > 0 and budget > 1)",
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
]
