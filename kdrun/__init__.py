"""kdrun: how much does distillation help this student, on this data, with this method?

Kept free of torch and Hydra imports so that `kdrun --help` answers instantly.
"""

__version__ = "0.1.0"
