"""Speed and memory of the SEAL ranker's steps next to plain LoRA SFT, on seal-bench batches.

For SmolLM2-135M (or --model), on the CPU and on CUDA when present, each phase runs in a
process of its own (so its peak memory is its own):

* ``sft``: plain LoRA SFT steps (``seal_core.finetune.sft_step``), each on a pool batch (the
  ``batch_size`` longest pool samples) plus that step's safe-set batch;
* ``bilevel``: SEAL bilevel steps (``seal_core.ranker.seal.bilevel_step``) on the same pool batch,
  with the same safe batches, at ``gamma = cfg.gamma(1)`` (< 1, so both levels backpropagate);
* ``score``: the no-gradient scoring pass (``seal_core.tokenization.score_losses``).

So ``sft`` and ``bilevel`` see exactly the same samples, and their ratio is what the bilevel
machinery costs on top of the forward/backward passes. It prints tokens/s (non-padding tokens
through the model), peak memory (CPU: the process's peak RSS, model load included; CUDA:
``torch.cuda.max_memory_allocated``) and the ratios to ``sft``; on CUDA also the bilevel step's
model FLOPs utilisation (see :func:`forward_flops`). Last it runs ``seal rank`` at max_length 512
in a child process and prints its peak RSS.

    python bench/ranker_speed.py                          # CPU (+ CUDA when present), 2 timed steps
    python bench/ranker_speed.py --budgets 1M,4M,16M,64M,0  # SFT step per logits budget (0: unchunked)
    python bench/ranker_speed.py --rank-rows 0            # seal rank on the whole pool (slow on CPU)
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py would shadow the standard library's `select` (imported by subprocess):
# take this script's folder off sys.path before anything else is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "data" / "seal-bench"
UNCHUNKED = 2**62

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, for MFU; --peak-tflops overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
               "4090": 165.0, "3090": 71.0, "V100": 125.0, "T4": 65.0}


def vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


# ----------------------------------------------------------------------------- child: one phase


def forward_flops(model, items: list, head_rows: int) -> float:
    """Model FLOPs of one forward over ``items``: 2 per multiply-add of the backbone's linear layers at
    every token, causal attention (QK^T and AV over the preceding tokens), and the LM head at the
    ``head_rows`` target positions. A trained pass costs twice this: the backward through the
    activations is one more forward's worth, and the frozen weights get no weight gradient (LoRA's
    own matmuls, under 1%, are left out)."""
    import torch

    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and m is not head and "lora_" not in n)
    cfg = model.config
    attn_width = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    tokens = sum(e.n_tokens for e in items)
    attention = sum(2 * 2 * cfg.num_hidden_layers * attn_width * e.n_tokens * (e.n_tokens + 1) / 2 for e in items)
    return 2.0 * linear * tokens + attention + 2.0 * head.weight.numel() * head_rows


def _setup(args):
    from seal_core.ingest import load_required_samples
    from seal_core.models import load_model
    from seal_core.ranker.config import RankConfig
    from seal_core.tokenization import encode_samples

    from seal_core.config import deep_merge, from_dict, parse_overrides

    cfg = from_dict(RankConfig, deep_merge(parse_overrides(args.overrides), {
        "model": args.model, "max_length": args.max_length, "device": args.device, "progress": False,
        "logits_budget": args.budget or UNCHUNKED}))
    model, tok = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    pool = sorted(load_required_samples(str(BENCH / "finetune_pool.jsonl"), "pool"), key=lambda s: s["sample_id"])
    safe = load_required_samples(str(BENCH / "safe_set.jsonl"), "safe set")
    pool_enc, _ = encode_samples(tok, pool, cfg.max_length, cfg.train_on, cfg.truncation)
    safe_enc, _ = encode_samples(tok, safe, cfg.max_length, cfg.train_on, cfg.truncation)
    return cfg, model, tok, pool_enc, safe_enc


def _batches(cfg, pool_enc, safe_enc, n_steps: int, device):
    """The pool batch (the longest samples) and the safe batch of each step, as the ranker draws them."""
    from seal_core.ranker.seal import SealLoopState, _Data
    from seal_core.training import Dist

    data = _Data(cfg, pool_enc, safe_enc, 0, device, Dist())
    idx = sorted(range(len(pool_enc)), key=lambda i: (-pool_enc[i].n_tokens, i))[: cfg.batch_size]
    state = SealLoopState()
    return idx, [data.next_safe_batch(state) for _ in range(n_steps)]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step, n_steps: int, device) -> list[float]:
    """Seconds of each of ``n_steps`` calls of ``step(k)``, after one untimed warm-up call."""
    out = []
    for k in range(n_steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        step(k)
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out[1:]


def run_sft(cfg, model, tok, pool_enc, safe_enc, args) -> dict:
    import torch

    from seal_core.finetune import FinetuneConfig, sft_step
    from seal_core.models import adapter_parameters
    from seal_core.tokenization import pad_token_id
    from seal_core.training import attach_lora

    device = next(model.parameters()).device
    idx, safe_batches = _batches(cfg, pool_enc, safe_enc, args.steps + 1, device)
    ft = FinetuneConfig(batch_size=2 * cfg.batch_size, micro_batch_size=cfg.micro_batch_size, lr=cfg.model_lr,
                        max_length=cfg.max_length, logits_budget=cfg.logits_budget, lora=cfg.lora, progress=False)
    flops_model = model
    model = attach_lora(model, ft.lora)
    params = adapter_parameters(model, "default")
    opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=0.0)
    encoded = pool_enc + safe_enc
    steps = [idx + [len(pool_enc) + j for j in s] for s in safe_batches]
    pad = pad_token_id(tok)
    secs = _time_steps(lambda k: sft_step(ft, model, opt, params, encoded, steps[k], pad, device), args.steps, device)
    return _step_record(secs, [[encoded[i] for i in s] for s in steps[1:]], flops_model)


def run_bilevel(cfg, model, tok, pool_enc, safe_enc, args) -> dict:
    from seal_core.ranker.hypergrad import HypergradientSignal, load_anchors
    from seal_core.ranker.seal import SealLoopState, _Data, _Learners, bilevel_step
    from seal_core.tokenization import pad_token_id
    from seal_core.training import Dist

    device = next(model.parameters()).device
    idx, safe_batches = _batches(cfg, pool_enc, safe_enc, args.steps + 1, device)
    flops_model = model
    data = _Data(cfg, pool_enc, safe_enc, pad_token_id(tok), device, Dist())
    learners = _Learners(cfg, model, len(pool_enc), device)
    hyper = (HypergradientSignal(cfg, tok, safe_enc, load_anchors(cfg, tok))
             if cfg.selector.update == "hypergradient" else None)
    state = SealLoopState()
    gamma = cfg.gamma(1)
    secs = _time_steps(lambda k: bilevel_step(learners, data, state, idx, gamma, hyper), args.steps, device)
    items = [[pool_enc[i] for i in idx] + [safe_enc[j] for j in s] for s in safe_batches[1:]]
    return {**_step_record(secs, items, flops_model), "gamma": gamma}


def _step_record(secs: list[float], items: list[list], model) -> dict:
    """Totals over the timed steps; ``items[k]``: the samples step k trains on (forward and backward)."""
    tokens = [sum(e.n_tokens for e in it) for it in items]
    flops = [2 * forward_flops(model, it, sum(e.n_target_tokens for e in it)) for it in items]
    return {"seconds": sum(secs), "tokens": sum(tokens), "flops": sum(flops), "steps": len(secs)}


def run_score(cfg, model, tok, pool_enc, safe_enc, args) -> dict:
    from seal_core.tokenization import score_losses

    device = next(model.parameters()).device
    enc = pool_enc[: args.score_rows] if args.score_rows else pool_enc
    score_losses(model, tok, enc[: cfg.score_batch_size], cfg.score_batch_size, progress=False,
                 logits_budget=cfg.logits_budget)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    score_losses(model, tok, enc, cfg.score_batch_size, progress=False, logits_budget=cfg.logits_budget)
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "tokens": sum(e.n_tokens for e in enc), "steps": 1,
            "flops": sum(forward_flops(model, [e], e.n_target_tokens) for e in enc)}


def run_hypergradient(cfg, model, tok, pool_enc, safe_enc, args) -> dict:
    """A bilevel step with selector.update=hypergradient: per-sample dots from one batched backward."""
    from dataclasses import replace

    return run_bilevel(replace(cfg, selector=replace(cfg.selector, update="hypergradient")), model, tok, pool_enc,
                       safe_enc, args)


def run_hypergradient_per_sample(cfg, model, tok, pool_enc, safe_enc, args) -> dict:
    """The same step through the fallback path (one backward per sample), to show what batching saves."""
    from seal_core.ranker import hypergrad

    hypergrad.row_alignments = lambda *a, **k: None
    return run_hypergradient(cfg, model, tok, pool_enc, safe_enc, args)


PHASES = {"sft": run_sft, "bilevel": run_bilevel, "score": run_score, "hypergrad": run_hypergradient,
          "hypergrad-1by1": run_hypergradient_per_sample}
DEFAULT_PHASES = ("sft", "bilevel", "score")


def child(args) -> None:
    import torch

    cfg, model, tok, pool_enc, safe_enc = _setup(args)
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rec = PHASES[args.child](cfg, model, tok, pool_enc, safe_enc, args)
    rec["peak_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else vm_hwm_bytes()
    rec["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print("RESULT " + json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------- parent


def run_child(args, phase: str, device: str, budget: int) -> dict:
    cmd = [sys.executable, __file__, "--child", phase, "--device", device, "--budget", str(budget),
           "--model", args.model, "--max-length", str(args.max_length), "--steps", str(args.steps),
           "--score-rows", str(args.score_rows)] + [a for o in args.overrides for a in ("--set", o)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len("RESULT "):])


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


_RANK_RUNNER = """
import sys
from seal_cli.main import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(f"VmHWM_KB={hwm}", file=sys.stderr)
sys.exit(rc or 0)
"""


def rank_peak_rss(args, device: str) -> dict:
    """Peak RSS of ``seal rank`` (CLI defaults, max_steps 3) on the first ``--rank-rows`` pool rows."""
    with tempfile.TemporaryDirectory() as tmp:
        pool = BENCH / "finetune_pool.jsonl"
        if args.rank_rows:
            lines = pool.read_text(encoding="utf-8").splitlines()[: args.rank_rows]
            pool = Path(tmp) / "pool.jsonl"
            pool.write_text("\n".join(lines) + "\n", encoding="utf-8")
        cmd = [sys.executable, "-c", _RANK_RUNNER, "rank", "--pool", str(pool), "--safe", str(BENCH / "safe_set.jsonl"),
               "--out", str(Path(tmp) / "out"), "--model", args.model, "--max-length", str(args.max_length),
               "--set", "max_steps=3", "--set", f"device={device}", "--no-progress"]
        cmd += [a for o in args.overrides for a in ("--set", o)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
        wall = time.perf_counter() - t0
        rows = sum(1 for _ in pool.open(encoding="utf-8"))
    hwm = [int(x.split("=")[1]) for x in proc.stderr.splitlines() if x.startswith("VmHWM_KB=")]
    if proc.returncode or not hwm:
        return {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}"}
    return {"peak_rss_gib": hwm[-1] / 2**20, "wall_s": wall, "rows": rows}


def peak_tflops(args, name: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def print_table(device: str, results: dict, args) -> None:
    sft = results.get("sft", {})
    print(f"\n{device}: {results[next(iter(results))].get('device_name', '')}")
    cuda = device.startswith("cuda")
    head = f"{'phase':<16}{'tokens':>8}{'s/step':>9}{'tokens/s':>10}{'peak GiB':>10}{'x sft time':>12}{'x sft mem':>11}"
    print(head + (f"{'TFLOP/s':>9}{'MFU':>7}" if cuda else ""))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<16}{r['error']}")
            continue
        tps = r["tokens"] / r["seconds"]
        per_step = r["seconds"] / r["steps"]
        rel_t = f"{(sft['tokens'] / sft['seconds']) / tps:.2f}" if "seconds" in sft else "-"
        rel_m = f"{r['peak_bytes'] / sft['peak_bytes']:.2f}" if "peak_bytes" in sft else "-"
        line = f"{name:<16}{r['tokens'] // r['steps']:>8}{per_step:>9.2f}{tps:>10.0f}{r['peak_bytes'] / 2**30:>10.2f}"
        line += f"{rel_t:>12}{rel_m:>11}"
        if cuda:
            achieved = r["flops"] / r["seconds"] / 1e12
            peak = peak_tflops(args, r.get("device_name", ""))
            line += f"{achieved:>9.1f}" + (f"{achieved / peak:>7.1%}" if peak else f"{'n/a':>7}")
        print(line)
    print("x sft time: seconds per token relative to sft (the target for bilevel is <= 1.3); "
          "x sft mem: peak memory relative to sft")


def parse_budgets(text: str) -> list[int]:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    out = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        mult = units.get(part[-1], 1)
        out.append(int(float(part[:-1] if mult > 1 else part) * mult))
    return out


def main(argv: list[str] | None = None) -> int:
    from seal_core.tokenization import DEFAULT_LOGITS_BUDGET

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per phase (after one warm-up step)")
    ap.add_argument("--score-rows", type=int, default=64, help="pool samples the scoring pass scores (0: all)")
    ap.add_argument("--rank-rows", type=int, default=64, help="pool rows for the seal rank RSS run (0: all)")
    ap.add_argument("--devices", default="", help="comma-separated; default cpu, plus cuda when available")
    ap.add_argument("--budgets", default="", help="also time the sft step at these logits budgets (0: unchunked)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: from its name)")
    ap.add_argument("--no-rank", action="store_true", help="skip the seal rank RSS run")
    ap.add_argument("--hypergradient", action="store_true",
                    help="also time a selector.update=hypergradient step, batched and one backward per sample")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="RankConfig override for every phase and the seal rank run, e.g. micro_batch_size=4")
    ap.add_argument("--child", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, default=DEFAULT_LOGITS_BUDGET, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args)
        return 0
    devices = [d for d in args.devices.split(",") if d] or _default_devices()
    print(f"model {args.model}, max_length {args.max_length}, logits budget {args.budget:,}, "
          f"{args.steps} timed steps per phase, {os.cpu_count()} CPUs"
          + (f", --set {' '.join(args.overrides)}" if args.overrides else ""), flush=True)
    for device in devices:
        phases = DEFAULT_PHASES + (("hypergrad", "hypergrad-1by1") if args.hypergradient else ())
        results = {phase: run_child(args, phase, device, args.budget) for phase in phases}
        for b in parse_budgets(args.budgets):
            results[f"sft budget={_fmt_budget(b)}"] = run_child(args, "sft", device, b)
        print_table(device, results, args)
        if not args.no_rank:
            r = rank_peak_rss(args, device)
            print(f"seal rank peak RSS ({r.get('rows', '?')} pool rows, max_length {args.max_length}, max_steps 3): "
                  + (r["error"] if "error" in r else f"{r['peak_rss_gib']:.2f} GiB in {r['wall_s']:.0f} s"),
                  flush=True)
    return 0


def _fmt_budget(b: int) -> str:
    if b == 0:
        return "off"
    return f"{b / 2**20:g}M" if b >= 2**20 else str(b)


def _default_devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


if __name__ == "__main__":
    sys.exit(main())
