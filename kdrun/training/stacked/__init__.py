"""Stacked students: a sweep's distilled students trained together in one pass (docs/stacked.md)."""
