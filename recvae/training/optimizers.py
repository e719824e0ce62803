"""The optimizers of the training loops: Adam with weight decay on weight matrices only
(:func:`make_optimizer`), and, under ``sparse_item_updates``, a lazy Adam for the item matrices
(:class:`ItemSparseAdam`, its moments in fp32 or bf16 with :class:`LazyAdam`), which
:func:`prepare_item_training` readies the net for.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from recvae.runtime.distributed import DistributedContext
from recvae.nn.item_output import set_item_counts
from recvae.training.config import TrainingConfig

__all__ = ["make_optimizer", "ItemSparseAdam", "LazyAdam", "prepare_item_training"]


def make_optimizer(params, config: TrainingConfig) -> torch.optim.Optimizer | ItemSparseAdam:
    """Adam with weight decay on weight matrices only (not biases or norms).

    A parameter with a ``weight_decay`` attribute gets that decay instead (e.g. the
    joint model's item-item matrix, see :class:`recvae.nn.joint.ItemItemLinear`).
    Parameters marked ``sparse_grad`` (the item matrices under
    ``sparse_item_updates``, see :func:`prepare_item_training`) get a lazy sparse
    Adam and the rest the fused Adam, together an :class:`ItemSparseAdam`.
    """
    params = list(params)
    sparse = [p for p in params if getattr(p, "sparse_grad", False)]
    params = [p for p in params if not getattr(p, "sparse_grad", False)]
    own = [p for p in params if hasattr(p, "weight_decay")]
    decay = [p for p in params if p.ndim >= 2 and not hasattr(p, "weight_decay")]
    no_decay = [p for p in params if p.ndim < 2 and not hasattr(p, "weight_decay")]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              *({"params": [p], "weight_decay": p.weight_decay} for p in own)]
    if sparse:
        return ItemSparseAdam(groups, [{"params": sparse, "weight_decay": config.weight_decay}], config.lr,
                              moments=config.item_moments)
    # The fused implementation is several times faster on the large item matrices.
    return torch.optim.Adam(groups, lr=config.lr, fused=True)


_MOMENT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LazyAdam(torch.optim.Optimizer):
    """``torch.optim.SparseAdam``'s update (lazy Adam over the rows of sparse gradients) with its
    moments stored in ``moments_dtype``.

    Each step gathers the moments of the rows in the gradient, updates them and the rows in
    float32 exactly as SparseAdam does, and stores the moments back rounded to
    ``moments_dtype``: bf16 halves the optimizer state of an items x d matrix (its
    relative rounding, 2^-9, is far below Adam's own noise). Rows absent from a step keep
    their weights and moments. A state dict loads back in ``moments_dtype`` (torch's
    default would cast it to the parameter's float32).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 moments_dtype: torch.dtype = torch.bfloat16) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive; got {lr}")
        self.moments_dtype = moments_dtype
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("LazyAdam takes sparse gradients (embedding_bag(sparse=True)); use Adam "
                                       "for dense ones")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, dtype=self.moments_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=self.moments_dtype)
                state["step"] += 1
                grad = param.grad.coalesce()
                rows, values = grad.indices()[0], grad.values().float()
                exp_avg = state["exp_avg"].index_select(0, rows).float()
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).float()
                exp_avg.add_(values.sub(exp_avg).mul_(1 - beta1))
                exp_avg_sq.add_(values.square().sub_(exp_avg_sq).mul_(1 - beta2))
                state["exp_avg"].index_copy_(0, rows, exp_avg.to(self.moments_dtype))
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq.to(self.moments_dtype))
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"])).mul_(-step_size)
                param.index_add_(0, rows, update.to(param.dtype))
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(self.moments_dtype)


class ItemSparseAdam:
    """Adam for a net whose item matrices get sparse gradients: ``SparseAdam`` for those, fused Adam for the rest.

    Dense Adam reads and writes every row of an items x 600 matrix each step (~28
    bytes per parameter), whatever the batch touched; ``SparseAdam`` updates the
    rows present in the sparse gradient and their moments alone (a "lazy" Adam:
    a row's moments do not decay while its item is absent). ``SparseAdam`` has no
    weight decay, so a sparse group's ``weight_decay`` is added to the gradient
    of the rows it holds (L2 as Adam's own ``weight_decay``, but lazily). Quacks
    like an optimizer for the loops and checkpoints: ``zero_grad``, ``step``,
    ``param_groups`` (both optimizers'), ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, dense_groups: list[dict], sparse_groups: list[dict], lr: float, moments: str = "fp32") -> None:
        self.dense = torch.optim.Adam(dense_groups, lr=lr, fused=True)
        self.sparse = (torch.optim.SparseAdam(sparse_groups, lr=lr) if moments == "fp32"
                       else LazyAdam(sparse_groups, lr=lr, moments_dtype=_MOMENT_DTYPES[moments]))

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.sparse.param_groups:
            decay = group.get("weight_decay", 0.0)
            for param in group["params"]:
                if decay and param.grad is not None:
                    grad = param.grad.coalesce()
                    rows = grad.indices()[0]
                    param.grad = torch.sparse_coo_tensor(grad.indices(), grad.values() + decay * param[rows],
                                                         grad.shape, is_coalesced=True, check_invariants=False)
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def prepare_item_training(net: torch.nn.Module, train: sp.csr_matrix, config: TrainingConfig,
                          ctx: DistributedContext | None) -> None:
    """What a net's item layers need before its optimizer is made (the loops call it).

    A popularity negative sampler (``sampled_softmax``) gets the training matrix's
    interactions per item; under ``sparse_item_updates`` the net switches its item
    matrices to sparse gradients and marks them for :func:`make_optimizer`.
    """
    set_item_counts(net, np.bincount(train.indices, minlength=train.shape[1]))
    if not config.sparse_item_updates:
        return
    if ctx is not None:
        raise ValueError("sparse_item_updates runs in one process only (data-parallel gradients are all-reduced "
                         "dense); turn it off under torchrun")
    enable = getattr(net, "enable_sparse_item_gradients", None)
    if enable is None:
        raise ValueError(f"sparse_item_updates needs a net with sparse item layers; {type(net).__name__} has none")
    enable()
