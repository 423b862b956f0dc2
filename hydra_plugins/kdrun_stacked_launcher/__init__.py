"""kdrun's Hydra launcher plugin `kdrun_stacked` (Hydra finds plugins in the `hydra_plugins` namespace package)."""
