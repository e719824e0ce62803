"""The decoder's matmul lower bound of a Mult-VAE training step, shared by the speed benchmarks.

Whatever the encoder does, every training step of an I-...-d-I VAE must compute
its output layer's three B x d x I matmuls: the forward logits ``h @ W.T``, the
gradient with respect to the layer's input ``g @ W`` and the gradient with
respect to its weight ``g.T @ h``. Their time at the step's shape, measured on
the same machine at the same moment, is the yardstick a step's time is read
against (a ratio, robust to a noisy machine, where seconds are not).
"""

from __future__ import annotations

import time

import torch

__all__ = ["DecoderMatmuls", "decoder_bound_seconds"]


class DecoderMatmuls:
    """The three matmuls of a (batch x hidden) -> (batch x n_items) output layer, on random operands.

    ``run()`` does them once (and waits for the device); ``seconds()`` times one run.
    """

    def __init__(self, batch: int, hidden: int, n_items: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        self.a = torch.randn(batch, hidden, generator=generator, dtype=dtype).to(self.device)
        self.w = torch.randn(n_items, hidden, generator=generator, dtype=dtype).to(self.device)
        self.g = torch.randn(batch, n_items, generator=generator, dtype=dtype).to(self.device)
        self.flops = 3 * 2 * batch * hidden * n_items

    def run(self, forward: int = 1, grad_input: int = 1, grad_weight: int = 1) -> None:
        """The matmuls once each by default; RecVAE's epoch of 3 encoder passes (decoder frozen: no
        weight gradient) and 1 decoder pass (encoder frozen: no input gradient) per batch is
        ``run(forward=4, grad_input=3, grad_weight=1)``."""
        for _ in range(forward):
            _ = self.a @ self.w.T  # forward logits
        for _ in range(grad_input):
            _ = self.g @ self.w  # gradient w.r.t. the layer input
        for _ in range(grad_weight):
            _ = self.g.T @ self.a  # gradient w.r.t. the weight
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self) -> float:
        started = time.perf_counter()
        self.run()
        return time.perf_counter() - started


def decoder_bound_seconds(batch: int, hidden: int, n_items: int, repeats: int = 5,
                          device: torch.device | str = "cpu") -> float:
    """Mean seconds of the three matmuls over ``repeats`` runs, after one warm-up run."""
    matmuls = DecoderMatmuls(batch, hidden, n_items, device)
    matmuls.run()
    return sum(matmuls.seconds() for _ in range(repeats)) / repeats
