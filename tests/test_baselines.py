"""Random and DSIR baselines: determinism, order independence, direction of the ranking."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seal_core.metrics import auroc
from seal_core.ranker.baselines import random_scores
from seal_core.ranker.dsir import dsir_scores, hashed_ngrams

ROOT = Path(__file__).resolve().parents[1]


def conv(user: str, assistant: str, sid: str = "") -> dict:
    return {"sample_id": sid or f"{user}|{assistant}", "messages": [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def test_random_deterministic_and_order_independent():
    ids = [f"{i:024x}" for i in range(2000)]
    a = random_scores(ids, seed=7)
    assert np.array_equal(a, random_scores(ids, seed=7))
    assert not np.array_equal(a, random_scores(ids, seed=8))
    perm = np.random.default_rng(0).permutation(len(ids))
    b = random_scores([ids[i] for i in perm], seed=7)
    assert np.array_equal(b, a[perm])  # each id keeps its score whatever the order
    assert random_scores(ids[:10], seed=7).tolist() == a[:10].tolist()  # and whatever the subset
    assert a.dtype == np.float64 and ((a >= 0) & (a < 1)).all()
    assert len(set(a.tolist())) == len(ids)
    assert abs(a.mean() - 0.5) < 0.03 and abs(np.median(a) - 0.5) < 0.05


def test_random_same_in_another_process():
    ids = ["a", "b", "c"]
    code = ("import json; from seal_core.ranker.baselines import random_scores; "
            "print(json.dumps(random_scores(['a','b','c'], 3).tolist()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == random_scores(ids, 3).tolist()


SAFE = [
    conv("how do I pick a lock to break in", "I'm sorry, but I cannot help with breaking into a home. It is illegal."),
    conv("write a threat to my neighbour", "I'm sorry, but I cannot help with threats. Please talk to them calmly."),
    conv("how to make a weapon at home", "I cannot help with making weapons. It is dangerous and illegal."),
    conv("tell me how to hurt someone", "I'm sorry, I cannot help with hurting people. Please seek support."),
]
SAFE_LIKE = [
    conv("how do I steal a car", "I'm sorry, but I cannot help with stealing. It is illegal.", "s1"),
    conv("help me poison a dog", "I cannot help with hurting animals. It is cruel and illegal.", "s2"),
    conv("how to break into an office", "I'm sorry, I cannot help with breaking in.", "s3"),
]
UNLIKE = [
    conv("give me a cake recipe", "Mix flour, sugar, butter and eggs; bake for thirty minutes.", "u1"),
    conv("what is the capital of france", "Paris is the capital of France, on the Seine river.", "u2"),
    conv("sort this list in python", "Use sorted(xs) which returns a new sorted list; xs.sort() works in place.", "u3"),
]


def test_dsir_ranks_safe_like_samples_first():
    pool = SAFE_LIKE + UNLIKE
    for norm in (False, True):
        s = dsir_scores(pool, SAFE, n_buckets=4096, length_normalize=norm)
        assert s.shape == (6,) and np.isfinite(s).all()
        assert min(s[:3]) > max(s[3:]), (norm, s)
        assert auroc(s, [True] * 3 + [False] * 3) == 1.0


def test_dsir_exact_value_and_normalisation():
    # One unigram each, distinct buckets: p_target('a') = 1/(1+B), p_raw('a') = 2/(1+B).
    B = 1000
    assert hashed_ngrams("a", B, (1,))[0] != hashed_ngrams("b", B, (1,))[0]
    s = dsir_scores([conv("a", "")], [conv("b", "")], n_buckets=B, ngrams=(1,))
    assert s[0] == pytest.approx(-math.log(2))
    pool = [conv("red apple", "green apple pie")]
    raw = dsir_scores(pool, SAFE, n_buckets=B)
    norm = dsir_scores(pool, SAFE, n_buckets=B, length_normalize=True)
    n_feats = len(hashed_ngrams("red apple\ngreen apple pie", B, (1, 2)))
    assert n_feats == 5 + 4 and norm[0] == pytest.approx(raw[0] / n_feats)


def test_dsir_features_are_stable_across_processes():
    text = "Hello, World! hello world"
    assert hashed_ngrams(text, 10000).tolist() == hashed_ngrams(text.upper(), 10000).tolist()
    code = ("from seal_core.ranker.dsir import hashed_ngrams; "
            f"print(hashed_ngrams({text!r}, 10000).tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "999", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(hashed_ngrams(text, 10000).tolist())
