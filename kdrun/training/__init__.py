"""Training: the one loop (loop.py), the run pipeline (pipeline.py), the teacher cache, run files."""
