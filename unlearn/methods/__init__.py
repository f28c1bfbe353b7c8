"""Unlearning methods; importing this package registers the built-in ones."""

from unlearn.methods import gradient, iau, newton, npo, soul  # noqa: F401
from unlearn.unlearner import METHODS, UnlearnArgs, UnlearnResult, get_method, load_method_args

__all__ = ["METHODS", "UnlearnArgs", "UnlearnResult", "get_method", "load_method_args"]
