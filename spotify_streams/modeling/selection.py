"""Choosing among candidates: the series' one tie rule, for notebook 05's grid and 06's final
model and forecaster. Of the candidates within the noise of the best, the simplest."""

from __future__ import annotations

import pandas as pd

from spotify_streams.evaluation import paired_difference
from spotify_streams.search_spaces import ORIGINAL_MLP

# Simpler first (06's candidates): a model constrained to be monotone in song age before the
# same model without the constraint (it can fit less); small boosted trees before a forest of
# deep ones; trees before the network; a single model before an average of two.
SIMPLICITY = ["mean", "linear", "ridge", "hgb", "hgb tuned", "rf tuned", "hgb tuned, free",
              "rf tuned, free", "original MLP", "tuned MLP", "ensemble"]


def grid_param(name: str) -> str:
    """The GridSearchCV parameter name of a KerasMLPRegressor knob inside make_mlp's pipeline."""
    return f"mlp__regressor__{name}"


def within_noise(scores: pd.DataFrame, splits) -> list:
    """The candidates (columns of per-fold scores) not shown worse than the one with the best
    mean score: by the evidence rule, one comparison each, their difference from the best has
    an interval that reaches zero. The best comes first."""
    best = scores.mean().idxmax()
    return [best] + [c for c in scores if c != best and paired_difference(
        scores[c], scores[best], splits)["ci_high"] >= 0]


def simplest_within_noise(scores: pd.DataFrame, splits, cost) -> tuple:
    """The tie rule: of the candidates within_noise, the one with the lowest cost (a Series
    over the candidates; lower is simpler), then the better mean score. Returns the choice and
    the tied candidates."""
    tied = within_noise(scores, splits)
    order = pd.DataFrame({"cost": pd.Series(cost)[tied], "score": -scores[tied].mean()})
    return order.sort_values(["cost", "score"], kind="stable").index[0], tied


def simplicity(names) -> pd.Series:
    """SIMPLICITY's order as a cost for simplest_within_noise."""
    return pd.Series({name: SIMPLICITY.index(name) for name in names})


def training_cost(params: dict) -> tuple:
    """How much a grid configuration trains (epochs × steps per epoch × width), then how many
    of its knobs differ from the original network: of two equally cheap configurations, the
    one nearer the original is simpler (and the choice does not hang on a score difference
    that another CPU's rounding could flip)."""
    knob = {k: float(params[grid_param(k)]) for k in ["epochs", "batch_size", "neurons"]}
    changed = sum(params[grid_param(k)] != v for k, v in ORIGINAL_MLP.items()
                  if grid_param(k) in params and k not in knob)
    return knob["epochs"] / knob["batch_size"] * knob["neurons"], changed


def tie_rule(splits, cost=training_cost):
    """simplest_within_noise as a GridSearchCV `refit`: it reads each configuration's fold
    scores from cv_results_ and returns the chosen one's index. Unlike the plain best, it does
    not flip between scores that differ by noise such as another CPU's rounding."""
    def choose(cv_results) -> int:
        results = pd.DataFrame(cv_results)
        scores = results.filter(regex=r"^split\d+_test_score$").T.reset_index(drop=True)
        costs = pd.Series([cost(params) for params in results["params"]])
        return int(simplest_within_noise(scores, splits, costs)[0])

    return choose
