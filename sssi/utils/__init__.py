"""Small helpers shared across sssi (files, logging)."""
