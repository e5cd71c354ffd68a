"""Hidden-state features on the tiny random model: batching-invariant and equal to a direct forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seal_core.encoded import EncodedPool
from seal_core.errors import SealError
from seal_core.models import tiny_model
from seal_core.ranker.features import features_and_losses, hidden_features
from seal_core.tokenization import IGNORE_INDEX, encode_samples, score_losses


def _conv(q, a):
    return {"sample_id": q[:12], "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


SAMPLES = [
    _conv("Hi there.", "Hello!"),
    _conv("What colour is the sky on a clear summer day?", "The sky is blue on a clear day, mostly."),
    _conv("Name a fruit.", "A pear, " * 12),
    _conv("Write a long story about a boat that sails across the sea.", "Once upon a time " * 10),
]


@pytest.fixture(scope="module")
def model_tok():
    return tiny_model(0)


@pytest.fixture(scope="module")
def enc(model_tok):
    _, tok = model_tok
    out, rejects = encode_samples(tok, SAMPLES, 256, "final", "keep_prompt")
    assert not rejects
    return out


def _direct(model, e, layer):
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([e.input_ids]), output_hidden_states=True).hidden_states[layer][0]
    target = torch.tensor(e.labels) != IGNORE_INDEX
    t0 = int(target.nonzero()[0])
    return hs[target].mean(0).numpy(), hs[t0 - 1].numpy()


def test_features_equal_a_direct_forward(model_tok, enc):
    model, tok = model_tok
    feats = hidden_features(model, tok, enc, None, batch_size=4)
    assert sorted(feats) == [0, 1, 2]  # embeddings + 2 layers
    for layer, (resp, last) in feats.items():
        assert resp.shape == last.shape == (len(enc), 64) and resp.dtype == np.float32
        for i, e in enumerate(enc):
            r, p = _direct(model, e, layer)
            np.testing.assert_allclose(resp[i], r, atol=1e-5)
            np.testing.assert_allclose(last[i], p, atol=1e-5)
    # resp_mean and last_prompt are different readings of the sequence
    assert not np.allclose(feats[1][0], feats[1][1])


def test_features_do_not_depend_on_batching(model_tok, enc):
    model, tok = model_tok
    batched = hidden_features(model, tok, enc, [1, -1], batch_size=4)
    assert sorted(batched) == [1, 2]  # -1 is the last hidden-state output
    for i in range(len(enc)):
        alone = hidden_features(model, tok, [enc[i]], [1, -1], batch_size=1)
        for layer in (1, 2):
            np.testing.assert_allclose(alone[layer][0][0], batched[layer][0][i], atol=1e-5)
            np.testing.assert_allclose(alone[layer][1][0], batched[layer][1][i], atol=1e-5)


def test_features_of_an_encoded_pool_and_row_order(model_tok, enc):
    model, tok = model_tok
    pool = EncodedPool.from_encoded(enc)
    a = hidden_features(model, tok, pool, [2], batch_size=2)[2]
    rev = hidden_features(model, tok, list(reversed(enc)), [2], batch_size=2)[2]
    np.testing.assert_allclose(a[0], rev[0][::-1], atol=1e-5)
    np.testing.assert_allclose(a[1], rev[1][::-1], atol=1e-5)
    assert model.training is False


def test_bad_layer_is_a_clear_error(model_tok, enc):
    model, tok = model_tok
    with pytest.raises(SealError, match="layer 3 out of range"):
        hidden_features(model, tok, enc, [3], batch_size=2)


def test_features_and_losses_in_one_pass_equal_the_two_passes(model_tok, enc):
    """One forward gives the probe's features and the pool's losses, as hidden_features and
    score_losses compute them apart (combined's default signals rely on this to skip a pass)."""
    model, tok = model_tok
    resp, last, losses, none = features_and_losses(model, tok, enc, 1, batch_size=2, logits_budget=64)
    want_resp, want_last = hidden_features(model, tok, enc, [1], batch_size=2)[1]
    np.testing.assert_allclose(resp, want_resp, rtol=0, atol=1e-6)
    np.testing.assert_allclose(last, want_last, rtol=0, atol=1e-6)
    want = score_losses(model, tok, enc, 2, progress=False)
    assert losses.shape == (len(enc),) and np.isfinite(losses).all() and none is None
    np.testing.assert_allclose(losses, want, rtol=1e-6)
    # With token_nll the same pass also gives every target token's NLL, as score_losses does.
    pool = enc if isinstance(enc, EncodedPool) else EncodedPool.from_encoded(enc)
    *_, tl, tokens = features_and_losses(model, tok, pool, 1, batch_size=2, logits_budget=64, token_nll=True)
    want_l, want_t = score_losses(model, tok, pool, 3, progress=False, token_nll=True)
    np.testing.assert_allclose(tl, want, rtol=1e-6)
    np.testing.assert_allclose(want_l, want, rtol=1e-6)
    np.testing.assert_array_equal(tokens.offsets, want_t.offsets)
    np.testing.assert_allclose(tokens.values, want_t.values, rtol=1e-5, atol=1e-6)
    for i in range(len(pool)):
        assert len(tokens.row(i)) == int(pool[i].n_target_tokens) and tokens.row(i).mean() == pytest.approx(want[i], rel=1e-5)
