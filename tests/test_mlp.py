"""Tests for the vectorized MLP trainer in helpers.py."""
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import (
    _dropout_uniforms,
    _epoch_order,
    _init_weights,
    _order_rng,
    build_mlp,
    fit_mlp_keras,
    mlp_from_weights,
    train_mlp_batch,
)

ROOT = Path(__file__).resolve().parents[1]


def _data(n=120, f=5, m=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f)).astype(np.float32)
    y = X @ rng.normal(size=f) + 0.5 * rng.normal(size=n)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    return np.repeat(X[None], m, axis=0), np.repeat(y[None], m, axis=0)


def test_matches_plain_keras_step_by_step():
    # 2 models, different training rows (90 and 100 rows: partial last batches of 10 and 4,
    # and model 0 has a padded 7th step), different learning rates, no dropout.
    N, F, H, E, B = 120, 5, 16, 5, 16
    X, y = _data(N, F)
    train = np.zeros((2, N), bool)
    train[0, :90] = True
    train[1, 20:] = True
    lrs = [1e-3, 1e-2]
    res = train_mlp_batch(X, y, train, ~train, neurons=H, batch_size=B, learning_rate=lrs,
                          dropout=0.0, epochs=E, seed=7)
    init = _init_weights(7, 2, F, H)
    for m in range(2):
        model = build_mlp(F, H, 0.0, lrs[m])
        model.set_weights([w[m] for w in init])
        rng, rows, losses = _order_rng(7), np.flatnonzero(train[m]), []
        for _ in range(E):
            order = _epoch_order(rng, rows)
            hist = model.fit(X[m][order], y[m][order], batch_size=B, epochs=1, shuffle=False,
                             verbose=0)
            losses.append(hist.history["loss"][0])
        pred = model.predict(X[m], verbose=0)[:, 0]
        np.testing.assert_allclose(res.predictions[E][m], pred, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.history["loss"][:, m], losses, rtol=1e-5)
        val = ~train[m]
        np.testing.assert_allclose(res.history["val_loss"][-1, m],
                                   np.mean((pred[val] - y[m][val]) ** 2), rtol=1e-5)
    assert not np.allclose(res.history["loss"][0], res.history["loss"][-1])  # it trained


def test_dropout_deterministic_and_seed_dependent():
    X, y = _data(m=2)
    train = np.ones((2, X.shape[1]), bool)
    kw = dict(neurons=16, batch_size=16, dropout=[0.2, 0.5], epochs=3)
    a = train_mlp_batch(X, y, train, seed=1, **kw)
    b = train_mlp_batch(X, y, train, seed=1, **kw)
    c = train_mlp_batch(X, y, train, seed=2, **kw)
    np.testing.assert_array_equal(a.predictions[3], b.predictions[3])
    assert not np.allclose(a.predictions[3], c.predictions[3])
    # Different dropout rates on identical data/init/order => different models.
    assert not np.allclose(a.predictions[3][0], a.predictions[3][1])
    # Eval mode has no dropout noise: predicting with the final weights twice is identical,
    # and equals the weights' noiseless forward pass.
    model = mlp_from_weights(a.weights[3], 0, dropout=0.2)
    p1, p2 = model.predict(X[0], verbose=0), model.predict(X[0], verbose=0)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(p1[:, 0], a.predictions[3][0], rtol=1e-5, atol=1e-6)
    assert np.all(np.isnan(a.history["val_loss"]))  # no validation rows given
    # The dropout noise itself depends on the seed and the epoch, not just init and order.
    u = {(s, e): _dropout_uniforms(s, e, 2, 16, 8, True)[0].numpy() for s in (1, 2) for e in (0, 1)}
    np.testing.assert_array_equal(u[1, 0], _dropout_uniforms(1, 0, 2, 16, 8, True)[0].numpy())
    assert not np.allclose(u[1, 0], u[2, 0]) and not np.allclose(u[1, 0], u[1, 1])


def test_dropout_training_matches_tape_reference():
    # Reference for training with dropout: same init, order and uniforms, the masked forward pass
    # written out in TF, gradients from GradientTape, updates from the real Keras Adam.
    import tensorflow as tf
    N, F, H, B, rate, lr = 120, 5, 16, 32, 0.3, 1e-2
    X, y = _data(N, F, m=1)
    train = np.zeros((1, N), bool)
    train[0, :100] = True                           # 4 steps, last one partial (4 rows)
    res = train_mlp_batch(X, y, train, neurons=H, batch_size=B, dropout=rate, learning_rate=lr,
                          epochs=2, seed=3)
    model = build_mlp(F, H, 0.0, lr)
    model.set_weights([w[0] for w in _init_weights(3, 1, F, H)])
    opt = keras.optimizers.Adam(learning_rate=lr)
    rng, rows = _order_rng(3), np.flatnonzero(train[0])
    for epoch in range(2):
        order = _epoch_order(rng, rows)
        u1, u2 = (u.numpy() for u in _dropout_uniforms(3, epoch, 4, B, H, True))
        for s in range(4):
            batch = order[s * B:(s + 1) * B]
            k = len(batch)
            d1 = np.where(u1[s, :k] >= rate, 1 / (1 - rate), 0).astype(np.float32)
            d2 = np.where(u2[s, :k] >= rate, 1 / (1 - rate), 0).astype(np.float32)
            W1, b1, W2, b2, W3, b3 = model.trainable_variables
            with tf.GradientTape() as tape:
                h = tf.nn.relu(tf.matmul(X[0][batch], W1) + b1) * d1  # numpy @ Variable = constant
                h = tf.nn.relu(h @ W2 + b2) * d2
                loss = tf.reduce_mean(tf.square(h @ W3 + b3 - y[0][batch][:, None]))
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
    for fast, ref in zip(res.weights[2], model.get_weights()):
        np.testing.assert_allclose(fast[0], ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_padded_steps_are_noops(dropout):
    X, y = _data(m=2)
    train = np.zeros((2, X.shape[1]), bool)
    train[0, :40] = True    # 3 steps of 16 per epoch (the last partial) ...
    train[1, :] = True      # ... padded to this model's 8 steps
    kw = dict(neurons=8, batch_size=16, dropout=dropout, learning_rate=[1e-2, 1e-3], epochs=4)
    both = train_mlp_batch(X, y, train, **kw)
    alone = train_mlp_batch(X[:1], y[:1], train[:1], **{**kw, "learning_rate": 1e-2})
    for w_both, w_alone in zip(both.weights[4], alone.weights[4]):
        np.testing.assert_allclose(w_both[0], w_alone[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(both.history["loss"][:, 0], alone.history["loss"][:, 0], rtol=1e-6)


def test_snapshot_equals_shorter_run():
    X, y = _data(m=2)
    train = np.ones((2, X.shape[1]), bool)
    kw = dict(neurons=8, batch_size=32, dropout=0.2, learning_rate=[1e-3, 1e-2])
    long = train_mlp_batch(X, y, train, epochs=100, snapshot_epochs=(50, 100), **kw)
    short = train_mlp_batch(X, y, train, epochs=50, **kw)
    assert sorted(long.predictions) == [50, 100]
    np.testing.assert_array_equal(long.predictions[50], short.predictions[50])
    for a, b in zip(long.weights[50], short.weights[50]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(long.history["loss"][:50], short.history["loss"])
    assert not np.array_equal(long.predictions[50], long.predictions[100])


_SCRIPT = """
import sys, hashlib, numpy as np
from helpers import train_mlp_batch
rng = np.random.default_rng(3)
X = rng.normal(size=(3, 90, 6)).astype(np.float32)
y = rng.normal(size=(3, 90)).astype(np.float32)
train = rng.random((3, 90)) < 0.7
res = train_mlp_batch(X, y, train, ~train, neurons=16, batch_size=16, dropout=[0.0, 0.2, 0.3],
                      learning_rate=[1e-3, 1e-2, 1e-3], epochs=6, snapshot_epochs=(3, 6), seed=5)
h = hashlib.sha256()
for e in (3, 6):
    h.update(res.predictions[e].tobytes())
    for w in res.weights[e]:
        h.update(w.tobytes())
h.update(res.history["loss"].tobytes()); h.update(res.history["val_loss"].tobytes())
print(h.hexdigest())
"""


def test_bit_reproducible_across_processes():
    digests = [subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT)], capture_output=True,
                              text=True, check=True).stdout.strip().splitlines()[-1]
               for _ in range(2)]
    assert len(digests[0]) == 64 and digests[0] == digests[1]


def test_mlp_from_weights_round_trip():
    X, y = _data(m=3)
    train = np.ones((3, X.shape[1]), bool)
    res = train_mlp_batch(X, y, train, neurons=32, batch_size=32, learning_rate=[1e-3, 1e-2, 3e-3],
                          epochs=5)
    for m in range(3):
        model = mlp_from_weights(res.weights[5], m)
        assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [32, 16, 1]
        pred = model.predict(X[m], verbose=0)[:, 0]
        np.testing.assert_allclose(pred, res.predictions[5][m], rtol=0, atol=1e-5)


def test_progress_and_plain_keras_path():
    X, y = _data(m=1)
    calls = []
    train_mlp_batch(X, y, np.ones_like(y, bool), neurons=8, epochs=3,
                    progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    model, hist = fit_mlp_keras(X[0], y[0], neurons=8, epochs=2, validation_data=(X[0], y[0]))
    assert len(hist["loss"]) == 2 and len(hist["val_loss"]) == 2
    model2, hist2 = fit_mlp_keras(X[0], y[0], neurons=8, epochs=2, validation_data=(X[0], y[0]))
    np.testing.assert_allclose(hist["loss"], hist2["loss"])  # seeded
