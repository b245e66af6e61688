"""TensorFlow checkpoints for JAX: :func:`load` into sharded ``jax.Array`` values.

Importing this module imports jax; ``import tfshard`` never does.
"""

from ._jax_sharding import load

__all__ = ["load"]
