import os

os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402

# Tests build many small programs with identical HLO; a persistent cache lets them share compiles.
jax.config.update("jax_compilation_cache_dir", os.environ.get("DYNALAB_JAX_CACHE", "/tmp/dynalab-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
