"""Runtime fixes for mmengine (safe checkpoint loading)."""
