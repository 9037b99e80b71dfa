"""Models: the baselines, the Keras network, the tie rule, saved models and predictions."""
