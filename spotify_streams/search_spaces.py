"""Every search space of the series in one place: the original network and its grid (notebooks
04–06), the ridge penalty (03) and the tree ensembles' grids (05). QUICK_* are the smoke runs'
versions: two configurations per search."""

from __future__ import annotations

import numpy as np

# The original report's network and grid.
ORIGINAL_MLP = {"learning_rate": 0.001, "dropout": 0.2, "neurons": 64, "batch_size": 32,
                "epochs": 100}
ORIGINAL_GRID = {"learning_rate": [0.001, 0.01], "dropout": [0.2, 0.3], "neurons": [64, 128],
                 "batch_size": [16, 32], "epochs": [50, 100]}
QUICK_GRID = {"learning_rate": [0.001, 0.01], "dropout": [0.2], "neurons": [64],
              "batch_size": [32], "epochs": [5]}

# Ridge's penalty, searched inside each fit over folds of whole artists (make_baseline).
RIDGE_ALPHAS = np.logspace(-2, 3, 11)

# The tree ensembles' knobs (notebook 05 tunes each on every feature set).
TREE_GRIDS = {
    "hgb": {"learning_rate": [0.05, 0.1], "max_depth": [3, None], "max_leaf_nodes": [7, 31],
            "min_samples_leaf": [10, 20], "l2_regularization": [0.0, 1.0]},
    "rf": {"max_depth": [6, None], "min_samples_leaf": [1, 5], "max_features": [0.33, 1.0],
           "max_samples": [0.5, None]},
}
QUICK_TREE_GRIDS = {name: {knob: values if i == 0 else values[-1:]
                           for i, (knob, values) in enumerate(knobs.items())}
                    for name, knobs in TREE_GRIDS.items()}
