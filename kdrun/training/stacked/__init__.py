"""Stacked students: a sweep's distilled students trained together in one vmapped pass (docs/stacked.md)."""
