"""Room "training": the training loops' bookkeeping (recvae/training/: loop.py, rec_vae.py and the modules
they share, validation.py, history.py, checkpoints.py, divergence.py) -- best epoch and best weights,
patience and min_epochs, eval_every and the last epoch, checkpoints and resume, divergence. Caught by
tests/test_training_wiring.py, whose validation scores are scripted per epoch with the best epoch never
the last, and whose weights oracle is a twin run stopped at the best epoch. (tools/mutate.py's own
train-* mutations cover other lines of the same loops.)"""

REC = "recvae/training/rec_vae.py"
VALIDATION = "recvae/training/validation.py"
HISTORY = "recvae/training/history.py"
CHECKPOINTS = "recvae/training/checkpoints.py"
DIVERGENCE = "recvae/training/divergence.py"
T_WIRING = "tests/test_training_wiring.py"
T_TRAIN = (T_WIRING, "tests/test_training.py", "tests/test_rec_vae_training.py")
# the old resume tests of tests/test_vae.py and tests/test_rec_vae.py by name (the rest of those files is slow)
T_RESUME = (*T_TRAIN, "tests/test_faults.py", "tests/test_vae.py::test_checkpoint_resume_continues_identically",
            "tests/test_rec_vae.py::test_checkpoint_resume_continues_identically")
T_DIVERGE = (*T_TRAIN, "tests/test_faults.py")

MUTATIONS = [
    dict(name="training-boundary-min-epochs-one-late", file=VALIDATION,
         old="and epoch >= config.min_epochs",
         new="and epoch > config.min_epochs",
         tests=T_TRAIN,
         why="patience may stop only after min_epochs, not at it: every run with min_epochs trains one epoch "
             "more than asked (the old test's min_epochs sat where the scores improved anyway)"),
    dict(name="training-boundary-recvae-last-epoch-not-validated", file=REC,
         old="if validation is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):",
         new="if validation is not None and (epoch % config.eval_every == 0):",
         tests=T_TRAIN,
         why="RecVAE with eval_every never validates a last epoch off the cycle (and a 1-epoch run with "
             "eval_every > 1 selects nothing); the Mult-VAE loop's copy of the line was pinned, this one not"),
    dict(name="training-stale-cache-resume-takes-the-last-weights-as-best", file=CHECKPOINTS,
         old='best = payload["best_state"]',
         new='best = payload["model"]',
         tests=T_RESUME,
         why="a resumed run takes the checkpoint's latest weights for the best epoch's: after the peak, the "
             "resumed run returns the checkpoint epoch's weights under the peak's epoch and score"),
    dict(name="training-stale-cache-recvae-checkpoint-best-is-the-live-net", file=REC,
         old='"best_state": state["best_state"],',
         new='"best_state": net.state_dict(),',
         tests=T_RESUME,
         why="RecVAE's checkpoint stores the current weights as the best ones; invisible while every fixture "
             "peaks at its last epoch"),
    dict(name="training-wiring-checkpoint-drops-the-patience-count", file=CHECKPOINTS,
         old='"state": {k: v for k, v in state.items() if k != "best_state"},',
         new='"state": {k: v for k, v in state.items() if k not in ("best_state", "since_best")},',
         tests=T_RESUME,
         why="the Mult-VAE checkpoint forgets the evaluations since the best: a resumed run counts patience "
             "afresh and trains past where the uninterrupted run stopped"),
    dict(name="training-wiring-recvae-resumed-early-stop-trains-on", file=REC,
         old='            if state["stopped_early"]:\n                break\n            started = time.perf_counter()',
         new="            started = time.perf_counter()",
         tests=T_RESUME,
         why="resuming a RecVAE checkpoint that stopped early trains further epochs (and another early stop "
             "moves the result) instead of returning its best weights as they are"),
    dict(name="training-direction-on-epoch-before-the-checkpoint", file=HISTORY,
         old="    if config.checkpoint and is_main:\n        save_checkpoint()\n"
             '    score = row.get(f"val_ndcg@{config.eval_k}")\n'
             "    if on_epoch is not None and score is not None:\n        on_epoch(epoch, score)\n",
         new='    score = row.get(f"val_ndcg@{config.eval_k}")\n'
             "    if on_epoch is not None and score is not None:\n        on_epoch(epoch, score)\n"
             "    if config.checkpoint and is_main:\n        save_checkpoint()\n",
         tests=T_RESUME,
         why="on_epoch runs before the checkpoint is written: a pruned (raising) epoch is never checkpointed, "
             "so a resumed run repeats it"),
    dict(name="training-direction-divergence-scale-of-a-negative-reference", file=DIVERGENCE,
         old="if loss - reference > (DIVERGENCE_FACTOR - 1) * abs(reference):",
         new="if loss - reference > (DIVERGENCE_FACTOR - 1) * reference:",
         tests=T_DIVERGE,
         why="with a negative first-batch loss (Gaussian likelihood with learned variance) the threshold turns "
             "negative: every later epoch, improving or not, is called diverged"),
    dict(name="training-all-to-any-recvae-divergence-ignores-the-encoder", file=REC,
         old='problem = (f"encoder {encoder_problem}" if encoder_problem\n'
             '                       else divergence(loss, state["first_loss"]["decoder"]))',
         new='problem = divergence(loss, state["first_loss"]["decoder"])',
         tests=T_DIVERGE,
         why="only the decoder phase's loss is checked: an exploding encoder phase trains on, is validated and "
             "checkpointed"),
    dict(name="training-boundary-finished-checkpoint-not-told", file=CHECKPOINTS,
         old='if state["epoch"] >= config.epochs:',
         new='if state["epoch"] > config.epochs:',
         tests=T_RESUME,
         why="resuming with epochs equal to the checkpoint's trains nothing without saying so (only fewer "
             "epochs than the checkpoint's were tested)"),
]
