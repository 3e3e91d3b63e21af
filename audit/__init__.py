"""Who did what: an append-only, hash-chained record of every action on patient data."""
