"""The Keras network (build_mlp) and its scikit-learn estimator (KerasMLPRegressor, make_mlp)."""

from __future__ import annotations

import functools
import json
import threading

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from spotify_streams.features import make_preprocessor
from spotify_streams.search_spaces import ORIGINAL_MLP

STEPS_PER_EXECUTION = 512  # training steps per call into TensorFlow (docs/performance.md)


def build_mlp(n_features, neurons=64, dropout=0.2, learning_rate=1e-3, seed=42,
              steps_per_execution=1):
    """The original network, compiled: Dense(neurons, ReLU) → Dropout → Dense(neurons/2, ReLU)
    → Dropout → Dense(1), trained with Adam on the mean squared error. Every random layer gets
    its own seed, so the same arguments give the same network in any process or thread."""
    import keras

    def dense(units, i, **kwargs):
        return keras.layers.Dense(units, **kwargs,
                                  kernel_initializer=keras.initializers.GlorotUniform(seed + i))

    model = keras.Sequential([
        keras.Input(shape=(n_features,)),
        dense(neurons, 1, activation="relu"),
        keras.layers.Dropout(dropout, seed=seed + 2),
        dense(neurons // 2, 3, activation="relu"),
        keras.layers.Dropout(dropout, seed=seed + 4),
        dense(1, 5),
    ])
    # jit_compile=False: XLA compiles every new model for seconds, more than a network this
    # small gains from it (docs/performance.md).
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse",
                  steps_per_execution=steps_per_execution, jit_compile=False)
    return model


# A new Keras model traces its training step on its first fit, which takes longer than 100
# epochs of training (docs/performance.md). So each process keeps one compiled copy of each
# architecture (keras.models.clone_model of the first model built) and starts every fit from a
# new model's state: initial weights, dropout seeds, a new Adam state, the learning rate. That
# gives the same numbers as a new model (tests/test_mlp.py) in half the time, and nothing here
# reads the network's knobs: build_mlp alone defines the network. The new model itself is
# built once per process and arguments (fresh_model: it is never trained, so its state stays new).
_TRAINERS: dict = {}
fresh_model = functools.cache(build_mlp)
_predictor = functools.cache(build_mlp)  # predict only sets the fitted weights
_FIT_LOCK = threading.Lock()  # Dask runs tasks in threads: one fit at a time per process


def architecture(model) -> str:
    """The model's input and layers as Keras describes them (get_config), without the names
    and seeds that differ between two builds of the same network: its cache key."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("name", "seed")}
        return [strip(v) for v in value] if isinstance(value, list | tuple) else value

    layers = [[type(layer).__name__, strip(layer.get_config())] for layer in model.layers]
    return json.dumps([list(model.input_shape), layers], sort_keys=True, default=str)


def _trainer(fresh, learning_rate, steps_per_execution):
    import keras

    key = (architecture(fresh), steps_per_execution)
    if key not in _TRAINERS:
        trainer = keras.models.clone_model(fresh)
        trainer.compile(optimizer=type(fresh.optimizer).from_config(fresh.optimizer.get_config()),
                        loss=fresh.loss, steps_per_execution=steps_per_execution,
                        jit_compile=False)
        _TRAINERS[key] = trainer
    trainer = _TRAINERS[key]
    trainer.set_weights(fresh.get_weights())
    for mine, new in zip(trainer.layers, fresh.layers):
        if isinstance(mine, keras.layers.Dropout) and mine.rate > 0:
            mine.seed_generator.state.assign(new.seed_generator.state)
    for variable in trainer.optimizer.variables:
        variable.assign(keras.ops.zeros_like(variable))
    trainer.optimizer.learning_rate.assign(learning_rate)
    return trainer


MATERIALIZE_BYTES = 2**28  # up to 256 MB of batches are laid out in memory (epoch_batches)


def epoch_batches(X, y, order, batch_size):
    """A tf.data pipeline of (X, y) batches: each row of `order` (epochs × rows, row positions)
    is one epoch in that order, cut into batches of batch_size, the last one of an epoch
    smaller. Laid out in memory when that takes at most MATERIALIZE_BYTES (no function for
    tf.data to trace: docs/performance.md); otherwise the rows are gathered batch by batch.
    Both give the same batches (tests/test_mlp.py)."""
    import tensorflow as tf

    rows = order.shape[1]
    sizes = np.tile(np.diff(np.r_[0:rows:batch_size, rows]), len(order))  # rows per batch
    if order.size * (X.shape[1] + 1) * 4 <= MATERIALIZE_BYTES:
        return tf.data.Dataset.from_tensor_slices(tuple(
            tf.RaggedTensor.from_row_lengths(values[order.ravel()], sizes) for values in (X, y)))
    batches = tf.RaggedTensor.from_row_lengths(order.ravel(), sizes)
    return tf.data.Dataset.from_tensor_slices(batches).map(
        lambda batch: (tf.gather(X, batch), tf.gather(y, batch)))


class KerasMLPRegressor(RegressorMixin, BaseEstimator):
    """build_mlp's network as a scikit-learn estimator. fit runs Keras's model.fit on a tf.data
    pipeline of the rows in a new order each epoch (numpy's generator seeded with random_state),
    in batches, all epochs in one pass (Keras's per-epoch overhead would cost ten times the
    training, docs/performance.md). With early_stopping: validation_fraction of the rows held
    out (whole groups, e.g. artists, when fit gets `groups`), epoch by epoch, the best weights
    kept (keras.callbacks.EarlyStopping with `patience`)."""

    def __init__(self, neurons=64, dropout=0.2, learning_rate=1e-3, batch_size=32, epochs=100,
                 early_stopping=False, validation_fraction=0.2, patience=10, random_state=42):
        self.neurons, self.dropout, self.learning_rate = neurons, dropout, learning_rate
        self.batch_size, self.epochs, self.early_stopping = batch_size, epochs, early_stopping
        self.validation_fraction, self.patience = validation_fraction, patience
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        import keras

        X, y = validate_data(self, X, y, dtype="float32", y_numeric=True)
        y, rows, held = y.astype("float32").reshape(-1, 1), np.arange(len(X)), None
        if self.early_stopping:
            holdout = GroupShuffleSplit(1, test_size=self.validation_fraction,
                                        random_state=self.random_state)
            rows, held = next(holdout.split(X, y, rows if groups is None else groups))
        rng = np.random.default_rng(self.random_state)
        order = np.stack([rng.permutation(rows) for _ in range(self.epochs)])  # epochs × rows
        steps = -(-len(rows) // self.batch_size)  # batches per epoch
        data = epoch_batches(X, y, order, self.batch_size)
        model = fresh_model(X.shape[1], self.neurons, self.dropout, seed=self.random_state)
        with _FIT_LOCK:
            if held is None:  # no per-epoch work: all epochs in one pass
                history = _trainer(model, self.learning_rate, STEPS_PER_EXECUTION).fit(
                    data, epochs=1, steps_per_epoch=steps * self.epochs, verbose=0,
                    shuffle=False)
            else:  # Keras's epochs, one call into TensorFlow each
                stop = keras.callbacks.EarlyStopping(patience=self.patience,
                                                     restore_best_weights=True)
                history = _trainer(model, self.learning_rate, steps).fit(
                    data, epochs=self.epochs, steps_per_epoch=steps, callbacks=[stop],
                    validation_data=(X[held], y[held]), verbose=0, shuffle=False)
            self.weights_, self.history_ = history.model.get_weights(), history.history
        self.validation_rows_ = held  # the rows early stopping watched (None: no holdout)
        return self

    def predict(self, X):  # the fitted state is numpy arrays: it pickles without Keras
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # a new batch shape retraces: no notice in outputs
        check_is_fitted(self)
        X = validate_data(self, X, dtype="float32", reset=False)
        with _FIT_LOCK:
            model = _predictor(X.shape[1], self.neurons, self.dropout)
            model.set_weights(self.weights_)
            return model.predict_on_batch(X).ravel()


def make_mlp(feature_set: str, seed=42, **params):
    """The original network as a Pipeline: make_preprocessor → KerasMLPRegressor, its target
    standardized on the training rows (TransformedTargetRegressor). Early stopping by artist:
    make_mlp(fs, early_stopping=True).fit(X, y, mlp__groups=artist_key(rows))."""
    network = KerasMLPRegressor(**{**ORIGINAL_MLP, **params}, random_state=seed)
    return Pipeline([("prepare", make_preprocessor(feature_set)),
                     ("mlp", TransformedTargetRegressor(network, transformer=StandardScaler()))])
