"""The SEAL selector: one logit per pool sample, and the named rules that move it.

Weights are ``w = N*softmax(z)`` or ``w = 2*sigmoid(z)``. Each training step hands the
selector a per-sample signal ``d`` (fixed, no gradient: the lower-level loss, or its
change against a baseline) and a rule turns it into a surrogate objective whose gradient
in ``z`` is the update. A new rule is one :class:`SelectorUpdate` subclass registered with
:func:`register_update` plus its name in ``SelectorConfig.update``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch

from .config import SelectorConfig


def selector_weights(z: torch.Tensor, weighting: str) -> torch.Tensor:
    if weighting == "softmax":
        return z.numel() * torch.softmax(z, dim=0)
    return 2.0 * torch.sigmoid(z)


def selector_entropy(z: torch.Tensor) -> float:
    """Entropy of softmax(z) over log N: 1.0 means uniform weights."""
    p = torch.softmax(z.detach().double(), 0)
    h = -(p * torch.log(p.clamp_min(1e-300))).sum().item()
    return h / math.log(max(z.numel(), 2))


class SelectorUpdate:
    """A selector update rule: ``objective(z, idx, d)`` is minimised by one optimiser step on ``z``.

    Every rule tracks ``center``, a running weighted mean of ``d`` over recent batches; it is
    logged for all rules and used by those that centre the signal.
    """

    name: ClassVar[str]
    # What the loop hands over as d: "loss" (l_i, or its change against a baseline) or "hypergradient".
    signal: ClassVar[str] = "loss"

    def __init__(self, cfg: SelectorConfig):
        self.cfg = cfg
        self.center: Optional[float] = None

    def observe(self, w: torch.Tensor, d: torch.Tensor) -> None:
        # A running mean, not the batch's own: batches are length-grouped and samples of one kind
        # often share a length, so a batch mean would cancel the differences the selector must see.
        wd = w.detach()
        batch_mean = ((wd * d).sum() / wd.sum()).item()
        m = self.cfg.center_momentum
        self.center = batch_mean if self.center is None else m * self.center + (1.0 - m) * batch_mean

    def objective(self, z: torch.Tensor, idx: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"center": self.center}

    def load_state_dict(self, state: dict) -> None:
        self.center = state["center"]


UPDATES: dict[str, type[SelectorUpdate]] = {}


def register_update(cls: type[SelectorUpdate]) -> type[SelectorUpdate]:
    UPDATES[cls.name] = cls
    return cls


@register_update
class CenteredUpdate(SelectorUpdate):
    """Gradient ``(1/B)*dw_j/dz_j*(d_j - c)`` for batch members and exactly 0 elsewhere.

    For softmax weights ``dw_j/dz_j`` is taken with the normaliser fixed, i.e. ``N*p_j``, so the
    update matches the full objective's gradient ``p_j*(d_j - sum_i p_i*d_i)`` in expectation.
    """

    name = "centered"

    def objective(self, z, idx, d):
        return centered_objective(z, idx, d, self.cfg.weighting, self.center or 0.0)


@register_update
class ReferenceUpdate(SelectorUpdate):
    """The literal reference-code update: ``mean_B(w_i*d_i)`` through the full weights.

    Its softmax normaliser only counts the batch, so every visited sample is pushed down whatever
    its loss and the ranking mostly follows visiting order; kept for comparison.
    """

    name = "reference"

    def objective(self, z, idx, d):
        return (selector_weights(z, self.cfg.weighting)[idx] * d).mean()


@register_update
class HypergradientUpdate(CenteredUpdate):
    """The centred rule on ``d_i = dL_safe(theta')/dw_i`` (:mod:`.hypergrad`), divided by its running RMS.

    Through ``w = N*softmax(z)``, ``dF/dz_j = sum_i d_i*dw_i/dz_j = N*p_j*(d_j - sum_i p_i*d_i)``: the
    centred gradient is the chain rule of the hypergradient. Its size (``eta/B`` times products of
    gradient norms) changes by orders of magnitude between models and over training, so ``d - c`` is
    divided by a running RMS of itself: a sample one RMS from the centre then moves by about
    ``lr/B`` per visit, the units ``selector.lr`` has for the loss signal. One scale for the whole
    batch keeps the samples' relative sizes, which Adam's per-coordinate scaling would not.
    """

    name = "hypergradient"
    signal = "hypergradient"

    def __init__(self, cfg: SelectorConfig):
        super().__init__(cfg)
        self.mean_square: Optional[float] = None

    def observe(self, w: torch.Tensor, d: torch.Tensor) -> None:
        super().observe(w, d)
        # float64: d is eta/B times gradient products (1e-8 and below for a 7B model at lr 1e-5), and
        # its square would leave float32's normal range
        wd, dd = w.detach().double(), d.detach().double()
        batch_ms = ((wd * (dd - self.center) ** 2).sum() / wd.sum()).item()
        m = self.cfg.center_momentum
        self.mean_square = batch_ms if self.mean_square is None else m * self.mean_square + (1.0 - m) * batch_ms

    def objective(self, z, idx, d):
        rms = math.sqrt(self.mean_square) if self.mean_square else 1.0
        return centered_objective(z, idx, d / rms, self.cfg.weighting, (self.center or 0.0) / rms)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mean_square": self.mean_square}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mean_square = state["mean_square"]


def centered_objective(z: torch.Tensor, idx: torch.Tensor, d: torch.Tensor, weighting: str,
                       c: float) -> torch.Tensor:
    zb = z[idx]
    if weighting == "softmax":
        w_local = z.numel() * torch.exp(zb - torch.logsumexp(z.detach(), 0))
    else:
        w_local = 2.0 * torch.sigmoid(zb)
    return (w_local * (d - c)).mean()


def selector_objective(z: torch.Tensor, idx: torch.Tensor, d: torch.Tensor, update: str, weighting: str,
                       c: float = 0.0) -> torch.Tensor:
    """The surrogate of rule ``update`` with its running centre set to ``c`` (for tests and tools)."""
    rule = UPDATES[update](SelectorConfig(update=update, weighting=weighting))
    rule.center = c
    return rule.objective(z, idx, d)


class FreeLogitSelector:
    """One free logit per pool sample (keyed by position in the id-sorted pool), with its optimiser."""

    def __init__(self, n: int, cfg: SelectorConfig, device):
        self.cfg = cfg
        self.z = torch.zeros(n, dtype=torch.float32, device=device, requires_grad=True)
        # SGD by default: Adam's per-coordinate scaling reduces each sample's sparse gradient to its sign.
        self.opt = (torch.optim.Adam([self.z], lr=cfg.lr, betas=cfg.betas) if cfg.optimizer == "adam"
                    else torch.optim.SGD([self.z], lr=cfg.lr))
        self.rule = UPDATES[cfg.update](cfg)

    def weights(self) -> torch.Tensor:
        return selector_weights(self.z.detach(), self.cfg.weighting)

    def step(self, idx: list[int], w: torch.Tensor, d: torch.Tensor) -> None:
        """One update on the batch ``idx`` from its fixed signal ``d`` (``w``: its current weights)."""
        self.rule.observe(w, d)
        self.opt.zero_grad(set_to_none=True)
        self.rule.objective(self.z, torch.as_tensor(idx, device=self.z.device), d).backward()
        self.opt.step()

    def to_checkpoint(self) -> dict:
        """``z``, the rule's state and the optimiser's (under the checkpoint's ``opt`` mapping)."""
        return {"z": self.z.detach().cpu(), **self.rule.state_dict(), "opt": {"selector": self.opt.state_dict()}}

    def load_checkpoint(self, ck: dict) -> None:
        with torch.no_grad():
            self.z.copy_(ck["z"])
        self.opt.load_state_dict(ck["opt"]["selector"])
        self.rule.load_state_dict(ck)
