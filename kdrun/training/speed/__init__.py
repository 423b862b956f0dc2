"""THE speed layer: every switch that makes kdrun faster than the plain recipe, in one package.

What each switch buys was measured with `kdrun bench` (docs/performance.md, "Speed switches"):
- `adam.FastStep`: fused Adam/AdamW stepped by one direct kernel call instead of `optimizer.step()`'s
  ~0.2 ms of Python; private torch API, so only on verified torch versions, else `optimizer.step()`.
- `dropout.FastDropout` (trainer.fast_dropout): CPU dropout masks from uniform draws, 3x cheaper than
  `bernoulli_`; public torch API.
- `host.reuse_freed_host_memory` (CPU runs, glibc): no page faults for each step's gradients.
- `host.flush_subnormals` (trainer.flush_denormal): subnormal floats count as zero on CPU.
- `switches.SpeedSettings` (trainer.precision, channels_last, compile): autocast, memory format, torch.compile.
Nothing outside this package knows how a switch works: the loop steps through FastStep, models are
prepared by SpeedSettings.prepare, and a run calls prepare_host once.
"""

from kdrun.training.speed.adam import FastStep
from kdrun.training.speed.dropout import FastDropout, use_fast_dropout
from kdrun.training.speed.host import flush_subnormals, reuse_freed_host_memory, subnormals_left
from kdrun.training.speed.switches import SpeedSettings, cpu_only_switch, prepare_host, resolve_speed

__all__ = ["FastDropout", "FastStep", "SpeedSettings", "cpu_only_switch", "flush_subnormals", "prepare_host",
           "resolve_speed", "reuse_freed_host_memory", "subnormals_left", "use_fast_dropout"]
