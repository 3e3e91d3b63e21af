"""The task queue: one code path for the embedded default and for workers elsewhere."""
