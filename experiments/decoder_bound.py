"""The decoder's matmul lower bound of a Mult-VAE training step, shared by the speed benchmarks.

Whatever the encoder does, every training step of an I-...-d-I VAE must compute
its output layer's three B x d x I matmuls: the forward logits ``h @ W.T``, the
gradient with respect to the layer's input ``g @ W`` and the gradient with
respect to its weight ``g.T @ h``. Their time at the step's shape, measured on
the same machine at the same moment, is the yardstick a step's time is read
against (a ratio, robust to a noisy machine, where seconds are not).

The output layer is not the only matmul a step must do: the encoder's dense layers
(and a deep decoder's hidden ones) have theirs, which no implementation avoids
either. :class:`DenseLayerMatmuls` times those at a net's own layer shapes, so a
step can also be read against all of its dense matmuls (RecVAE's 600-wide encoder
runs 4 of its 6 dense layers 3 times per batch and epoch: at ML-1M's 3.7k items
they cost more than its 200 x I decoder).
"""

from __future__ import annotations

import time

import torch

from torch import nn

__all__ = ["DecoderMatmuls", "DenseLayerMatmuls", "decoder_bound_seconds"]


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


class DenseLayerMatmuls:
    """The three matmuls of each ``nn.Linear`` in ``modules``, at its (in, out) shape and ``batch`` rows,
    on random operands: the dense layers' share of a step's unavoidable matmuls.

    ``run(forward, grad_input, grad_weight)`` does each layer's matmuls that many times, as
    :meth:`DecoderMatmuls.run`; sparse input layers (``SparseLinear``) are not ``nn.Linear``
    and not counted: their work is a gather, not a matmul.
    """

    def __init__(self, batch: int, modules: list[nn.Module], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        self.shapes = [(m.in_features, m.out_features) for module in modules for m in module.modules()
                       if isinstance(m, nn.Linear)]
        if not self.shapes:
            raise ValueError("no nn.Linear layer in the modules given")
        self.layers = [DecoderMatmuls(batch, n_in, n_out, device, dtype, seed + i)
                       for i, (n_in, n_out) in enumerate(self.shapes)]
        self.flops = sum(layer.flops for layer in self.layers)  # one run() of the defaults

    def run(self, forward: int = 1, grad_input: int = 1, grad_weight: int = 1) -> None:
        for layer in self.layers:
            layer.run(forward, grad_input, grad_weight)


def decoder_bound_seconds(batch: int, hidden: int, n_items: int, repeats: int = 5,
                          device: torch.device | str = "cpu") -> float:
    """Mean seconds of the three matmuls over ``repeats`` runs, after one warm-up run."""
    matmuls = DecoderMatmuls(batch, hidden, n_items, device)
    matmuls.run()
    return sum(matmuls.seconds() for _ in range(repeats)) / repeats
