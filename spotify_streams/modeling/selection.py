"""Choosing a configuration: the tie rule of the grid search."""

from __future__ import annotations

import pandas as pd


def grid_param(name: str) -> str:
    """The GridSearchCV parameter name of a KerasMLPRegressor knob inside make_mlp's pipeline."""
    return f"mlp__regressor__{name}"


TIE_R2 = 0.01  # mean CV R² differences below this are not evidence (SE of a 5-fold mean ≈ 0.02)


def cheapest_within(tie=TIE_R2):
    """A GridSearchCV `refit` rule: of the configurations within `tie` of the best mean CV R²,
    the cheapest to train (epochs × steps per epoch × width), then the better scoring. Unlike
    the plain best, it does not flip between scores that differ by noise such as another CPU's
    rounding (docs/reproducibility.md)."""
    def choose(cv_results) -> int:
        results = pd.DataFrame(cv_results)
        knob = {k: results[f"param_{grid_param(k)}"].astype(float)
                for k in ["epochs", "batch_size", "neurons"]}
        cost = knob["epochs"] / knob["batch_size"] * knob["neurons"]
        tied = results["mean_test_score"] >= results["mean_test_score"].max() - tie
        order = pd.DataFrame({"cost": cost, "score": -results["mean_test_score"]})[tied]
        return int(order.sort_values(["cost", "score"], kind="stable").index[0])

    return choose
