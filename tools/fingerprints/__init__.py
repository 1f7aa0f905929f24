"""The training fingerprint: the weights after a short, fixed, deterministic training of each shipped task config,
hashed, so that two checkouts whose fingerprints agree train the same weights (``python tools/fingerprint.py``).

Modules: ``spec`` (what each task trains and on which data), ``data`` (the synthetic datasets), ``runs`` (the
trainings in a subprocess of the checkout under test, and the hashes), ``compare`` (two fingerprint files side by
side), ``cli``. See docs/fingerprints.md.
"""
from .cli import main
from .compare import compare, moved_pairs
from .runs import fingerprint_checkout, hash_state
from .spec import METHODS, TASKS, fingerprint_method

__all__ = ["METHODS", "TASKS", "compare", "fingerprint_checkout", "fingerprint_method", "hash_state", "main",
           "moved_pairs"]
