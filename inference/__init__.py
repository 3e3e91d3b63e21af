"""Model discovery, loading, preprocessing and prediction (no Flask in here)."""
