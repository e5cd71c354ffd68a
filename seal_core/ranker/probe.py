"""``seal-probe``: a SEAL selector parameterised by a network over frozen hidden-state features.

The free-logit selector (:class:`~.selector.FreeLogitSelector`) learns one number per pool sample
and so cannot score a sample it never saw. Here the logit is ``z_i = f_phi(h_i)``: ``h_i`` is the
sample's frozen features at one layer of the base model (:mod:`.features`: the mean hidden state
over the answer tokens and the state at the last prompt token, concatenated), standardised with
the pool's mean and std; ``f_phi`` is linear or a one-hidden-layer MLP. The weights are
``w = N*softmax(z)`` as before, the bilevel loop is unchanged, and the selector rule's surrogate
gradient in ``z`` flows into ``phi`` instead of into free logits. After training, ``f_phi`` scores
any pool (``seal score``, :mod:`.score`).

A finished run keeps the selector as ``selector.safetensors`` (``phi`` and the feature mean/std)
and ``selector.json`` (layer, shapes, the model and tokenisation settings the features need): a
tensor file and a JSON document, neither of which can run code when read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import SealError
from ..io import atomic_path, write_json
from .config import PROBE_FEATURES, RankConfig, SelectorConfig
from .features import hidden_features, num_hidden_layers
from .selector import UPDATES, selector_weights

SELECTOR_FORMAT = "seal-probe/1"
SELECTOR_WEIGHTS = "selector.safetensors"
SELECTOR_META = "selector.json"
# Constant features (e.g. a padding-free embedding dimension) would divide by zero.
_STD_FLOOR = 1e-6


class ProbeNet(torch.nn.Module):
    """``f_phi``: features -> one logit. The output layer starts at zero, so every weight starts at 1."""

    def __init__(self, in_dim: int, hidden: int = 0):
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        if hidden > 0:
            self.body = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.GELU())
            self.out = torch.nn.Linear(hidden, 1)
        else:
            self.body = torch.nn.Identity()
            self.out = torch.nn.Linear(in_dim, 1)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(h)).squeeze(-1)


def probe_layer(model, layer: int) -> int:
    """``probe.layer`` as an index into the hidden states: -1 is the middle layer, ``num_layers // 2``."""
    n = num_hidden_layers(model)
    if layer == -1:
        return n // 2
    if not 0 <= layer <= n:
        raise SealError(f"probe.layer={layer} out of range: the model has hidden states 0..{n}")
    return layer


def probe_inputs(resp_mean: np.ndarray, last_prompt: np.ndarray, features: str = "answer_and_prompt") -> np.ndarray:
    """The selector's input rows: the readings ``probe.features`` names, concatenated (float32)."""
    parts = {"resp_mean": resp_mean, "last_prompt": last_prompt}
    return np.concatenate([parts[k] for k in PROBE_FEATURES[features]], axis=1).astype(np.float32)


def probe_lr(probe_cfg, sel_cfg: SelectorConfig, in_dim: int) -> float:
    """The network's learning rate: ``probe.lr``, or the free logit's scaled to the feature dimension.

    Standardised features have ``|h|^2 ~ D``, so an SGD step of ``lr`` on a linear ``phi`` moves the
    sample's own logit ``D`` times as far as the same step on a free logit; Adam moves each of the
    ``D`` coordinates by about ``lr`` with mixed signs, about ``sqrt(D)`` times as far.
    """
    if probe_cfg.lr is not None:
        return probe_cfg.lr
    return sel_cfg.lr / (in_dim if sel_cfg.optimizer == "sgd" else math.sqrt(in_dim))


class ProbeSelector:
    """The :class:`~.selector.FreeLogitSelector` interface with ``z = f_phi(H)`` over frozen features."""

    def __init__(self, features: np.ndarray, cfg: RankConfig, layer: int, device):
        self.cfg = cfg.selector
        self.layer = layer
        self.features = cfg.probe.features
        x = torch.as_tensor(features, dtype=torch.float32)
        self.mean = x.mean(0)
        self.std = x.std(0, unbiased=False).clamp_min(_STD_FLOOR)
        self.h = ((x - self.mean) / self.std).to(device)
        self.net = ProbeNet(x.shape[1], cfg.probe.hidden).to(device)
        self.lr = probe_lr(cfg.probe, cfg.selector, x.shape[1])
        params, wd = list(self.net.parameters()), cfg.probe.weight_decay
        self.opt = (torch.optim.Adam(params, lr=self.lr, betas=cfg.selector.betas, weight_decay=wd)
                    if cfg.selector.optimizer == "adam" else torch.optim.SGD(params, lr=self.lr, weight_decay=wd))
        self.rule = UPDATES[cfg.selector.update](cfg.selector)
        self._z: Optional[torch.Tensor] = None

    @property
    def z(self) -> torch.Tensor:
        """``f_phi(H)`` for the whole pool, detached (cached until the next step or load)."""
        if self._z is None:
            with torch.no_grad():
                self._z = self.net(self.h).float()
        return self._z

    def weights(self) -> torch.Tensor:
        return selector_weights(self.z, self.cfg.weighting)

    def step(self, idx: list[int], w: torch.Tensor, d: torch.Tensor) -> None:
        """One update of ``phi`` from the batch's fixed signal ``d``: the rule's objective on ``f_phi(H)``.

        ``f_phi`` runs on all N rows (one small matmul) because softmax rules normalise over the pool.
        """
        self.rule.observe(w, d)
        self.opt.zero_grad(set_to_none=True)
        z = self.net(self.h)
        self.rule.objective(z, torch.as_tensor(idx, device=self.h.device), d).backward()
        self.opt.step()
        self._z = None

    def to_checkpoint(self) -> dict:
        return {"z": self.z.cpu(), **self.rule.state_dict(), "opt": {"selector": self.opt.state_dict()},
                "probe": {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                          "mean": self.mean, "std": self.std, "layer": self.layer, "hidden": self.net.hidden,
                          "lr": self.lr, "features": self.features}}

    def load_checkpoint(self, ck: dict) -> None:
        p = ck.get("probe")
        if p is None:
            raise SealError("the checkpoint holds no seal-probe selector; rerun without --resume")
        if (p["layer"] != self.layer or p["mean"].shape != self.mean.shape
                or not torch.allclose(p["mean"], self.mean, atol=1e-4, rtol=1e-4)):
            raise SealError("the checkpoint's selector was trained on other features (layer, probe.features or "
                            "model differ); rerun without --resume")
        self.net.load_state_dict({k: v.to(self.h.device) for k, v in p["net"].items()})
        self.opt.load_state_dict(ck["opt"]["selector"])
        self.rule.load_state_dict(ck)
        self._z = None


def probe_selector(cfg: RankConfig, model, tokenizer, pool_enc: list, dist=None,
                   features: Optional[np.ndarray] = None) -> ProbeSelector:
    """The seal-probe selector of ``pool_enc``: its features computed once, with the model as it is now.

    Called before training moves the model (LoRA's B starts at 0), so these are the base model's.
    ``features`` (:func:`probe_inputs` at ``probe.layer``, rows in ``pool_enc``'s order) skips the pass:
    ``method=combined`` computes them in the pass that also gives its losses.
    """
    layer = probe_layer(model, cfg.probe.layer)
    if features is None:
        resp, last = hidden_features(model, tokenizer, pool_enc, [layer], cfg.score_batch_size, cfg.progress,
                                     desc="probe features", dist=dist)[layer]
        features = probe_inputs(resp, last, cfg.probe.features)
    elif features.shape[0] != len(pool_enc):
        raise SealError(f"probe features have {features.shape[0]} rows for {len(pool_enc)} pool samples")
    return ProbeSelector(features, cfg, layer, next(model.parameters()).device)


def export_selector(run_dir: Path, cfg: RankConfig, model_id: str, dtype: str = "") -> Path:
    """Write ``run_dir/selector.safetensors`` and ``selector.json`` from the run's final checkpoint.

    The training loop always checkpoints its last step (epoch end or ``max_steps``), so the
    checkpoint's selector is the trained one, whether the run was resumed or not. ``dtype`` is the
    one the features were computed in (``auto`` resolved): ``seal score`` on another machine must
    compute them the same way, or the standardised features drift from the trained ones.
    """
    from safetensors.torch import save_file

    from ..training import CHECKPOINT_NAME, load_checkpoint

    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / CHECKPOINT_NAME)
    p = checkpoint["probe"]
    tensors = {f"net.{k}": v.contiguous() for k, v in p["net"].items()}
    tensors.update(feature_mean=p["mean"].contiguous(), feature_std=p["std"].contiguous())
    in_dim = int(p["mean"].numel())
    readings = PROBE_FEATURES[p.get("features", "answer_and_prompt")]
    with atomic_path(run_dir / SELECTOR_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": SELECTOR_FORMAT})
    write_json(run_dir / SELECTOR_META, {
        "format": SELECTOR_FORMAT, "layer": p["layer"], "hidden": p["hidden"], "in_dim": in_dim,
        "features": list(readings), "feature_dim": in_dim // len(readings), "weighting": cfg.selector.weighting,
        "model": cfg.model, "model_id": model_id, "seed": cfg.seed, "dtype": dtype or cfg.dtype, "max_length": cfg.max_length,
        "train_on": cfg.train_on, "truncation": cfg.truncation, "steps": checkpoint["step"],
    })
    return run_dir / SELECTOR_WEIGHTS


class TrainedProbe:
    """A trained selector read back from a run directory: ``meta`` (``selector.json``) and ``f_phi``."""

    def __init__(self, meta: dict, net: ProbeNet, mean: torch.Tensor, std: torch.Tensor, features: str,
                 method: str = "seal-probe"):
        self.meta, self.net, self.mean, self.std, self.features = meta, net, mean, std, features
        # The run's method: seal-probe, or combined (whose probe signal this selector is).
        self.method = method

    def logits(self, resp_mean: np.ndarray, last_prompt: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(probe_inputs(resp_mean, last_prompt, self.features))
        if x.shape[1] != self.net.in_dim:
            raise SealError(f"features have {x.shape[1]} dimensions, the selector takes {self.net.in_dim}")
        with torch.no_grad():
            return self.net((x - self.mean) / self.std).double().numpy()


def _run_method(run_dir: Path) -> str:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise SealError(f"{run_dir} is not a `seal rank` output directory (no config.json)")
    try:
        return str(json.loads(cfg_path.read_text()).get("method", ""))
    except (OSError, ValueError, AttributeError) as e:
        raise SealError(f"{cfg_path}: cannot read the run's config ({e})") from None


def load_trained_probe(run_dir: str | Path) -> TrainedProbe:
    """The selector a ``seal rank --method seal-probe`` (or ``combined``, with its ``probe`` signal) run
    left in ``run_dir``; anything else: SealError."""
    from safetensors import safe_open

    run_dir = Path(run_dir)
    method = _run_method(run_dir)
    if method not in ("seal-probe", "combined"):
        raise SealError(f"{run_dir} is a method={method!r} run: only `seal rank --method seal-probe` or "
                        "`--method combined` leaves a selector that can score new data")
    meta_path, weights_path = run_dir / SELECTOR_META, run_dir / SELECTOR_WEIGHTS
    if not (meta_path.is_file() and weights_path.is_file()):
        if method == "combined":
            raise SealError(f"{run_dir} has no {SELECTOR_META}/{SELECTOR_WEIGHTS}: the combined run did not finish, "
                            "or its combined.signals has no 'probe' (then every signal is forward-only: run "
                            "`seal rank --method combined` on the new pool)")
        raise SealError(f"{run_dir} has no {SELECTOR_META}/{SELECTOR_WEIGHTS}: the seal-probe run did not finish")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != SELECTOR_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {SELECTOR_FORMAT!r}")
        with safe_open(str(weights_path), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        # selector.json names the readings; files from before probe.features read both.
        names = tuple(meta.get("features", PROBE_FEATURES["answer_and_prompt"]))
        features = next((k for k, v in PROBE_FEATURES.items() if v == names), None)
        if features is None:
            raise ValueError(f"features {list(names)}, which this version cannot compute")
        net = ProbeNet(int(meta["in_dim"]), int(meta["hidden"]))
        net.load_state_dict({k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")})
        mean, std = tensors["feature_mean"], tensors["feature_std"]
    except Exception as e:  # JSON, safetensors and shape errors alike: the files are not a selector
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SealError(f"{weights_path}: not a readable seal-probe selector ({reason})") from None
    net.eval()
    return TrainedProbe(meta, net, mean, std, features, method)


__all__ = ["ProbeNet", "ProbeSelector", "TrainedProbe", "probe_selector", "probe_layer", "probe_inputs",
           "probe_lr", "export_selector", "load_trained_probe", "SELECTOR_WEIGHTS", "SELECTOR_META"]
