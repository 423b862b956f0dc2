"""Compression stages after distillation (recipe R5): pruning, then int8 quantisation.

Each stage takes the previous stage's model (the distilled student first) and becomes its own row
in the results: accuracy, non-zero parameters, size on disk and CPU latency, all measured in the run.
Stage files are imported here by name so they register themselves.
"""

from kdrun.compression import prune, quantize  # noqa: F401 - registers the stages
from kdrun.compression.quantize import load_quantized
from kdrun.compression.stages import STAGES, StageContext, check_stage_order, run_stages

__all__ = ["STAGES", "StageContext", "check_stage_order", "load_quantized", "run_stages"]
