"""Bugs planted in posterior-aware recommendations (recvae/models/posterior.py, the VAEs' sampled scorer, the
run's, CLI's and server's explore/uncertainty options); tests/test_explore.py is meant to catch each."""

POST = "recvae/models/posterior.py"
MV = "recvae/models/mult_vae.py"
Q = "recvae/runs/queries.py"
T = ("tests/test_explore.py",)

MUTATIONS = [
    dict(name="explore-direction-variance-for-sigma", file=MV,
         old="return mu + float(explore) * torch.exp(0.5 * log_var) * eps",
         new="return mu + float(explore) * torch.exp(log_var) * eps",
         tests=T, why="explore scales the posterior variance instead of its standard deviation"),
    dict(name="explore-rows-noise-by-position", file=POST,
         old="keys = _mix(row_keys(rows) ^ stream)",
         new="keys = _mix(np.arange(rows.shape[0], dtype=np.uint64) ^ stream)",
         tests=T, why="a user's draw depends on their position in the batch, not their history"),
    dict(name="explore-wiring-run-ranks-the-mean", file=Q,
         old='ranked = self.model if posterior is None else posterior["ranked"]',
         new="ranked = self.model",
         tests=T, why="Run.recommend(explore=t) checks t and then ranks the posterior mean"),
    dict(name="explore-wiring-server-drops-explore", file="recvae/serving/service.py",
         old='return self.run.model.explorer(key[3], key[4])',
         new='return self.run.model',
         tests=T, why="POST /recommend accepts explore and scores known users at the mean"),
    dict(name="explore-all-to-any-uncertainty-refusal", file=POST,
         old="    if (uncertainty or samples) and not model.has_posterior:",
         new="    if samples and not model.has_posterior:",
         tests=T, why="uncertainty=True on EASE answers instead of refusing"),
    dict(name="explore-boundary-spread-pairs", file=POST,
         old="    pairs = s * (s - 1) / 2.0",
         new="    pairs = s * s / 2.0",
         tests=T, why="the rank spread divides by the wrong number of pairs"),
]
