"""Hyperparameter searches: what a search varies, and the bridge to Optuna's maths."""
