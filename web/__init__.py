"""HTTP blueprints: pages, JSON API, health."""
