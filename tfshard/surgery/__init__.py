"""Checkpoint surgery beyond conversion: averaging checkpoints (:mod:`.average`),
resharding and partitioned variables (:mod:`.reshard`, :mod:`.partitions`),
moving averages (:mod:`.ema`) and name presets for well-known models
(:mod:`.presets`).

:mod:`tfshard.conversion` re-exports the public functions (``average``,
``reshard``, ``find_ema``, ``PRESETS``...): import them from there.
"""

# The operations build on tfshard.conversion, which imports them in turn: load
# it first, so that importing a module of this package first works too.
from .. import conversion as _conversion  # noqa: F401
