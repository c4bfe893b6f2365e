"""Training tools that make every width of a slimmable model accurate (needs the ``train`` extra).

Data (:mod:`.datasets`) -> a trainable :class:`Supernet` built from the same graph and channel
groups the engine runs -> slimmable training (:func:`fit`: sandwich rule with in-place or EMA
distillation, PSE-Net parallel sub-networks) -> per-profile BN calibration -> ``to_slim()``.
:func:`calibrate` gives any converted model per-profile batch-norm statistics.

torch is imported only when a class or function that needs it is used, so ``slimrt.train.datasets``
and ``slimrt eval`` work without it.
"""

from __future__ import annotations

from typing import Any

from .datasets import DATASETS, DataError, Dataset, cluttered_digits, digits, load_dataset

__all__ = ["DATASETS", "DataError", "Dataset", "Supernet", "TrainConfig", "History", "calibrate",
           "cluttered_digits", "digits", "evaluate", "fit", "load_dataset"]

_LAZY = {"Supernet": ".supernet", "TrainConfig": ".slimmable", "History": ".slimmable",
         "fit": ".slimmable", "evaluate": ".slimmable", "calibrate": ".calibration"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'slimrt.train' has no attribute '{name}'")
