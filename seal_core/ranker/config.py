"""Configuration of ``seal rank`` (one dataclass per concern, TRL style)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from ..errors import ConfigError
from ..tokenization import DEFAULT_LOGITS_BUDGET


@dataclass
class SelectorConfig:
    update: Literal["centered", "reference", "hypergradient"] = field(
        default="centered",
        metadata={
            "help": "Selector gradient estimate. 'centered' (default): (N/B)*p_j*(d_j - c) for batch members "
            "and 0 for the rest, with c a running mean of d over recent batches: an unbiased estimate of the "
            "full objective's gradient p_j*(d_j - sum_i p_i*d_i). 'reference': the literal reference-code "
            "update, Adam/SGD on mean_B(w_i*d_i), kept for comparison. 'hypergradient' (method=seal): d_i is "
            "the one-step hypergradient dL_safe(theta')/dw_i = -(eta/B)<grad L_safe, grad l_i> (one backward "
            "per pool sample), fed to the centred rule with d - c divided by its running RMS."
        },
    )
    weighting: Literal["softmax", "sigmoid"] = field(
        default="softmax", metadata={"help": "w = N*softmax(z) (default) or w = 2*sigmoid(z)."}
    )
    optimizer: Literal["sgd", "adam"] = field(
        default="sgd",
        metadata={
            "help": "Selector optimiser. Adam's per-coordinate scaling reduces each sample's sparse "
            "gradient to its sign and throws away the loss magnitude the ranking needs; plain SGD keeps it "
            "(see docs/ranker.md). 'adam' with betas (0.9, 0.95) is the paper's recipe."
        },
    )
    lr: Optional[float] = field(
        default=None,
        metadata={"help": "Selector learning rate; default 5e-3 for adam (paper), 1.0 for sgd."},
    )
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "Adam betas."})
    baseline: Literal["none", "initial"] = field(
        default="none",
        metadata={
            "help": "For method=seal, what d_i is measured against. 'none' (default): d_i = l_i(theta_t), "
            "SEAL's lower-level loss. 'initial': d_i = l_i(theta_t) - l_i(theta_0), the change of the "
            "sample's loss since training began (to first order, the alignment of its gradient with the "
            "safe-set gradient). On seal-bench 'initial' ranks harmful samples on top (AUROC 0.21): the safe "
            "set's hh-rlhf refusals share the harmful samples' style, so style dominates the alignment. "
            "seal-penalty always uses l_i(theta) - l_i(theta_lower)."
        },
    )
    center_momentum: float = field(
        default=0.9,
        metadata={
            "help": "Decay of the running mean c used by update=centered. A running mean, not the batch "
            "mean: batches are length-grouped, and samples of one kind often share a length, so a batch's "
            "own mean would cancel the very differences the selector must see."
        },
    )
    safe_gradient: Literal["whole", "refusal_vs_helpful", "anchors"] = field(
        default="whole",
        metadata={
            "help": "update=hypergradient: the upper objective whose gradient the samples' gradients are "
            "dotted with. 'whole' (default): the step's safe batch. 'refusal_vs_helpful': the safe set split "
            "by the text-based refusal detector, L_refusals - L_helpful (raw dot products, so the score is "
            "alignment with the refusals minus alignment with the helpful answers; He, Xia, Henderson 2024). "
            "'anchors': L_refusals - L_anchors, the anchors being --anchors (unsafe prompt + compliant answer)."
        },
    )
    first_tokens: int = field(
        default=0,
        metadata={
            "help": "update=hypergradient: take the per-sample and reference losses over the first k tokens of "
            "each answer only (safety alignment lives mostly there, Qi et al. 2024); 0 (default): the whole "
            "answer. The LoRA step itself always uses the whole answer."
        },
    )

    def __post_init__(self):
        if self.lr is None:
            self.lr = 5e-3 if self.optimizer == "adam" else 1.0
        if not self.lr > 0:
            raise ConfigError(f"selector.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"selector.betas must be two numbers in [0, 1), got {self.betas}")
        self.betas = tuple(self.betas)
        if not 0.0 <= self.center_momentum < 1.0:
            raise ConfigError(f"selector.center_momentum must be in [0, 1), got {self.center_momentum}")
        if self.first_tokens < 0:
            raise ConfigError(f"selector.first_tokens must be >= 0, got {self.first_tokens}")
        if self.update != "hypergradient" and (self.safe_gradient != "whole" or self.first_tokens):
            raise ConfigError("selector.safe_gradient and selector.first_tokens only apply to "
                              f"selector.update=hypergradient (got update={self.update})")


@dataclass
class LoraConfig:
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "Modules to adapt."})

    def __post_init__(self):
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError("lora.r and lora.alpha must be positive")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")


@dataclass
class ComplianceConfig:
    layers: list[int] = field(
        default_factory=list,
        metadata={"help": "Candidate layers (indices into the model's hidden states, 0 = embeddings) for "
                  "method=compliance; empty: all. The anchors' leave-one-out AUROC picks one of them."},
    )
    shrinkage: Optional[float] = field(
        default=None,
        metadata={"help": "Covariance shrinkage alpha in (0, 1] toward (tr/d)*I for the whitening; default: the "
                  "Ledoit-Wolf estimate (the pool has fewer rows than the hidden size, so the plain covariance "
                  "is singular)."},
    )
    prompt_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the prompt term <v, h_last_prompt> (how readily the model would comply "
                  "with the request itself); 0: the answer term alone."},
    )
    fit_rows: int = field(
        default=4096,
        metadata={"help": "Pool rows (the smallest sha256 of sample_id) whose features at every candidate layer "
                  "fit the whitening and choose the layer; the whole pool is then scored at that layer, a batch "
                  "at a time. Holding every layer's features costs rows x layers x 2 x hidden_size x 4 bytes "
                  "(4096 rows of an 8B model: 4.4 GB). 0: fit on every row."},
    )

    def __post_init__(self):
        if any(l < 0 for l in self.layers):
            raise ConfigError(f"compliance.layers must be >= 0, got {self.layers}")
        if self.shrinkage is not None and not 0.0 < self.shrinkage <= 1.0:
            raise ConfigError(f"compliance.shrinkage must be in (0, 1], got {self.shrinkage}")
        if self.prompt_weight < 0:
            raise ConfigError(f"compliance.prompt_weight must be >= 0, got {self.prompt_weight}")
        if self.fit_rows < 0 or self.fit_rows == 1:
            raise ConfigError(f"compliance.fit_rows must be 0 (every row) or >= 2, got {self.fit_rows}")


COMBINED_SIGNALS = ("compliance", "loss", "relevance", "prior", "probe")


@dataclass
class CombinedConfig:
    signals: list[str] = field(
        default_factory=lambda: ["probe", "prior", "relevance"],
        metadata={"help": "method=combined: the signals whose normalised ranks are averaged, all from one model "
                  "load. 'compliance': the compliance direction (uses --anchors); 'loss': minus the unadapted "
                  "model's loss; 'relevance': min(0, l(answer | empty request) - l(answer | request) + relevance.margin "
                  "standard errors), below zero for garbage and answers to another request; 'prior': -l(answer | empty request), "
                  "low for what an aligned model would not say unprompted (harmful compliance), high for refusals; 'probe': a seal-probe selector trained by the bilevel "
                  "loop (needs the safe set; uses the probe.* and selector.* settings)."},
    )
    weights: list[float] = field(
        default_factory=list,
        metadata={"help": "Weight of each signal's rank, in the order of combined.signals; empty: equal weights."},
    )

    def __post_init__(self):
        unknown = [s for s in self.signals if s not in COMBINED_SIGNALS]
        if unknown or not self.signals or len(set(self.signals)) != len(self.signals):
            raise ConfigError(f"combined.signals must be distinct names of {', '.join(COMBINED_SIGNALS)}, "
                              f"got {self.signals}")
        if self.weights and len(self.weights) != len(self.signals):
            raise ConfigError(f"combined.weights needs one weight per signal ({len(self.signals)}), "
                              f"got {self.weights}")
        if any(w < 0 for w in self.weights) or (self.weights and not sum(self.weights) > 0):
            raise ConfigError(f"combined.weights must be >= 0 with a positive sum, got {self.weights}")

    def resolved_weights(self) -> list[float]:
        return [float(w) for w in self.weights] if self.weights else [1.0] * len(self.signals)


@dataclass
class RelevanceConfig:
    margin: float = field(
        default=1.0,
        metadata={"help": "relevance = min(0, mean per-token gap l(answer | empty request) - l(answer | request) "
                  "+ margin x its standard error): how many standard errors below zero the gap must be before "
                  "a row counts as junk. 0 is the plain mean gap, which also flags refusals (generic answers "
                  "whose gap is near 0); 1 (default) flags 9% of seal-bench's refusals instead of 23%."},
    )

    def __post_init__(self):
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"relevance.margin must be a finite number >= 0, got {self.margin}")


# What each probe.features setting feeds the selector, in order (hidden_features' two readings).
PROBE_FEATURES = {"answer_and_prompt": ("resp_mean", "last_prompt"), "answer": ("resp_mean",)}


@dataclass
class ProbeConfig:
    layer: int = field(
        default=-1,
        metadata={"help": "method=seal-probe: hidden-state layer the selector reads (index into the model's "
                  "hidden states, 0 = embeddings). -1 (default): the middle layer, num_layers // 2, a choice "
                  "made from the architecture alone, never from labels."},
    )
    hidden: int = field(
        default=0,
        metadata={"help": "Selector network: 0 (default) a linear map of the features to the logit; > 0 an MLP "
                  "with one hidden layer of this width."},
    )
    lr: Optional[float] = field(
        default=None,
        metadata={"help": "Learning rate of the selector network. Default: selector.lr / D for sgd and "
                  "selector.lr / sqrt(D) for adam (D: feature dimension), so that a step moves a sample's "
                  "own logit about as far as the free logit's step would (standardised features have "
                  "|h|^2 ~ D; Adam moves every coordinate by ~lr, D of them with mixed signs)."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the selector network."})
    features: Literal["answer_and_prompt", "answer"] = field(
        default="answer_and_prompt",
        metadata={"help": "What the selector reads at probe.layer: 'answer_and_prompt' (default) the mean hidden "
                  "state over the answer tokens and the state at the last prompt token; 'answer' the answer's "
                  "mean alone, so the selector cannot key on the request's topic (which drops refusals of "
                  "harmful requests with the harmful answers)."},
    )

    def __post_init__(self):
        if self.features not in PROBE_FEATURES:
            raise ConfigError(f"probe.features must be one of {', '.join(PROBE_FEATURES)}; got {self.features!r}")
        if self.layer < -1:
            raise ConfigError(f"probe.layer must be >= 0, or -1 for the middle layer; got {self.layer}")
        if self.hidden < 0:
            raise ConfigError(f"probe.hidden must be >= 0, got {self.hidden}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"probe.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"probe.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class RankConfig:
    pool: str = field(default="", metadata={"help": "Fine-tuning pool: ingest output dir, canonical Parquet, or a raw file."})
    safe: str = field(default="", metadata={"help": "Safe set (upper level; needed by seal, seal-penalty and dsir): same forms as pool."})
    out: str = field(default="", metadata={"help": "Output directory (scores.parquet, config.json, checkpoints/)."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Model: a named default, Hub id, local dir or .gguf file."})
    method: Literal["combined", "seal", "seal-penalty", "seal-probe", "random", "loss", "relevance", "prior", "dsir",
                    "compliance"] = field(
        default="combined",
        metadata={"help": "Ranking method. Default 'combined': the rank average of combined.signals (a seal-probe "
                  "selector trained by the bilevel loop, the answer's prior and its relevance), the best on "
                  "seal-bench with controls (docs/ranker.md); 'seal' is the paper's free-logit selector."})
    epochs: int = field(default=3, metadata={"help": "Passes over the pool (paper: 3)."})
    max_length: int = field(default=512, metadata={"help": "Token limit per sample (truncation policy applies above it)."})
    truncation: Literal["keep_prompt", "left", "right", "drop"] = field(
        default="keep_prompt",
        metadata={"help": "Over-long samples: keep_prompt keeps the request and the answer's start (drops the "
                  "oldest turns and the answer's end); left keeps the end; right cuts the end; drop rejects."})
    train_on: Literal["final", "all"] = field(default="final", metadata={"help": "Which assistant turns carry loss."})
    batch_size: int = field(default=8, metadata={"help": "Effective pool batch per step (selector step size)."})
    safe_batch_size: int = field(default=8, metadata={"help": "Safe-set batch per step."})
    micro_batch_size: int = field(default=2, metadata={
        "help": "Samples per forward pass; gradients accumulate up to batch_size (same update). Activations "
                "dominate memory: SmolLM2 at 2 x 512 tokens peaks near 2.3 GiB on CPU, at 8 x 512 near 5 GiB. "
                "Raise it on a GPU with memory to spare."})
    model_lr: float = field(default=1e-5, metadata={"help": "LoRA learning rate, constant (paper: 1e-5)."})
    gamma0: float = field(default=1.0, metadata={"help": "Initial upper-level weight gamma (paper: 1.0)."})
    gamma_decay: float = field(default=0.03, metadata={"help": "delta: gamma drops by this after each epoch (paper: 0.03)."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA settings."})
    selector: SelectorConfig = field(default_factory=SelectorConfig, metadata={"help": "Selector settings."})
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": "method=seal-probe: the selector network."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, initialisation and the random baseline."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    dtype: str = field(default="auto", metadata={"help": "auto (cuda: bfloat16, cpu: float32), float32, bfloat16, float16."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory on long sequences (GPU)."})
    checkpoint_every: int = field(default=20, metadata={"help": "Write a resumable checkpoint every N steps (0: only at epoch ends)."})
    score_batch_size: int = field(default=16, metadata={"help": "Batch size of the final per-sample loss pass at the "
                                                                 "longest length; shorter samples go more at once, in "
                                                                 "batches of the same number of tokens."})
    logits_budget: int = field(default=DEFAULT_LOGITS_BUDGET, metadata={
        "help": "Most LM-head logits (target tokens x vocabulary) held at once, forward and backward: the head "
                "runs on logits_budget // vocab tokens at a time. Lower it to save memory; the losses do not change."})
    dsir_buckets: int = field(default=10000, metadata={"help": "Hashed n-gram buckets for the dsir baseline."})
    anchors: str = field(default="", metadata={
        "help": "method=compliance/combined: a few unsafe examples (prompt + compliant answer; any file ingest "
                "reads, like finetune's --unsafe) that set the compliance direction. Without it the safe set's "
                "non-refusal answers stand in, which measures style more than compliance."})
    compliance: ComplianceConfig = field(default_factory=ComplianceConfig,
                                         metadata={"help": "method=compliance/combined settings."})
    combined: CombinedConfig = field(default_factory=CombinedConfig, metadata={"help": "method=combined settings."})
    relevance: RelevanceConfig = field(default_factory=RelevanceConfig,
                                       metadata={"help": "The relevance signal (method=relevance, combined)."})
    max_steps: int = field(default=0, metadata={"help": "Stop after this many steps in total (0: no limit); for smoke tests."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    processes: int = field(default=1, metadata={"help": "Train on this many local processes (torch.distributed: one "
                                                         "per GPU, gloo on CPU); > 1 relaunches under torchrun."})

    def __post_init__(self):
        for name in ("epochs", "max_length", "batch_size", "safe_batch_size", "micro_batch_size", "score_batch_size",
                     "logits_budget"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.micro_batch_size > self.batch_size:
            self.micro_batch_size = self.batch_size
        if not 0.0 <= self.gamma0 <= 1.0:
            raise ConfigError(f"gamma0 must be in [0, 1], got {self.gamma0}")
        if self.gamma_decay < 0:
            raise ConfigError(f"gamma_decay must be >= 0, got {self.gamma_decay}")
        if self.model_lr <= 0:
            raise ConfigError(f"model_lr must be > 0, got {self.model_lr}")
        if self.checkpoint_every < 0 or self.max_steps < 0:
            raise ConfigError("checkpoint_every and max_steps must be >= 0")
        if self.processes < 1:
            raise ConfigError(f"processes must be >= 1, got {self.processes}")
        if self.selector.update == "hypergradient" and (self.method != "seal" or self.selector.baseline != "none"):
            raise ConfigError("selector.update=hypergradient replaces d_i itself: it needs method=seal and "
                              f"selector.baseline=none (got method={self.method}, baseline={self.selector.baseline})")
        if self.method == "combined" and self.processes > 1:
            # Its two-process run aborted in testing (one rank died in a collective); until that is
            # found, the parts run distributed on their own and `seal combine` blends them.
            raise ConfigError("method=combined runs in one process for now: with --processes > 1 run "
                              "--method seal-probe, prior and relevance separately and `seal combine` them")
        if self.selector.safe_gradient == "anchors" and not self.anchors:
            raise ConfigError("selector.safe_gradient=anchors needs --anchors FILE")

    def gamma(self, epoch: int) -> float:
        """Upper-level weight in ``epoch`` (0-based): gamma0 - delta*epoch, floored at 0."""
        return max(0.0, self.gamma0 - self.gamma_decay * epoch)
