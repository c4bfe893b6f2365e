"""Training tools that make every width of a slimmable model accurate (needs the ``train`` extra).

Data (:mod:`.datasets`) -> a trainable :class:`Supernet` built from the same graph and channel
groups the engine runs -> slimmable training -> per-profile BN calibration -> ``to_slim()``.
"""
