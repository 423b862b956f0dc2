"""`kdrun bench --switches`: what each CPU speed switch of kdrun/training/speed/ buys, one switch at a time.

Each measurement times training steps of recipe R4's models (teacher 784-1200-1200-10, student
784-20-20-10, dropout 0.5, batch 32, fused Adam) with the switch on and off, each side in a fresh
process (the allocator setting and the subnormal flags are process-wide), the sides alternating, and
reports the median step time of each side and their ratio: CPU time (what a step costs, barely
moved by other processes on the cores) and wall time, plus the minor page faults per step. The inputs are random images with MNIST's
empty border (the 384 pixels outside the centre 20x20). For flush_denormal the border is filled during
the first BORDER_STEPS steps and empty afterwards, as pixels that only a few early images touch: the
first layer's Adam moments of those pixels then decay by 0.9 per step through the subnormal range,
which is where the timed steps are. Everything is measured on every call.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

# switch -> (model, Adam learning rate, steps before timing, bf16 autocast): where that switch shows
WORKLOADS = {
    "fast_step": ("student", 1e-4, 20, False),       # FastStep's direct fused kernel call vs optimizer.step()
    "fast_dropout": ("teacher", 1e-4, 20, False),    # FastDropout masks vs nn.Dropout's bernoulli_
    "host_memory": ("teacher", 1e-4, 20, False),     # glibc keeps freed blocks (mallopt) vs its defaults, float32
    "host_memory_bf16": ("teacher", 1e-4, 20, True),  # the same with trainer.precision=bf16: autocast's weight copies
    "flush_denormal": ("teacher", 1e-3, 950, False),  # subnormal floats as zero vs IEEE subnormals (moments of unused pixels)
}
TIMED_STEPS = 200
BORDER_STEPS = 200  # flush_denormal: steps whose images fill the border
HIDDEN = {"teacher": [1200, 1200], "student": [20, 20]}


def measure_switches(repeats: int = 3) -> dict[str, dict[str, list[dict[str, float]]]]:
    """switch -> {"on": [one process's medians], "off": [...]}, sides alternating on, off, on, off..."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for switch in WORKLOADS:
        results[switch] = {"on": [], "off": []}
        for _ in range(repeats):
            for side in ("on", "off"):
                command = [sys.executable, "-m", "kdrun.bench.switches", switch, side]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                results[switch][side].append(json.loads(output.splitlines()[-1]))
    return results


def step_times(switch: str, on: bool) -> list[tuple[float, float, int]]:
    """(CPU ms, wall ms, minor page faults) of each timed training step, in this process, `switch` on or off."""
    from kdrun.models import build_model
    from kdrun.training.speed import FastStep, adam, flush_subnormals, reuse_freed_host_memory, use_fast_dropout

    kind, lr, warm_steps, bf16 = WORKLOADS[switch]
    if not switch.startswith("host_memory") or on:
        reuse_freed_host_memory()  # every CPU run does this first; only host_memory measures without it
    if switch != "flush_denormal" or on:
        flush_subnormals()
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, hidden=HIDDEN[kind], dropout=0.5)
    if switch != "fast_dropout" or on:
        use_fast_dropout(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    if switch == "fast_step" and not on:
        adam.DIRECT_CALL = False
    stepper = FastStep(optimizer)
    inputs, targets = mnist_like_batches(64, border=False)
    early = mnist_like_batches(64, border=True)[0] if switch == "flush_denormal" else inputs
    times = []
    for step in range(warm_steps + TIMED_STEPS):
        started, cpu_started, faults = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        batch = (early if step < BORDER_STEPS else inputs)[step % 64]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(batch), targets[step % 64])
        stepper.clear_gradients()
        loss.backward()
        stepper.step()
        if step >= warm_steps:
            times.append((1000 * (time.process_time() - cpu_started), 1000 * (time.perf_counter() - started),
                          resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return times


def mnist_like_batches(count: int, border: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` batches of 32 random 28x28 images in [0, 1], zero outside the centre 20x20 unless `border`."""
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(count, 32, 1, 28, 28, generator=generator)
    if not border:
        outside = torch.ones(28, 28, dtype=torch.bool)
        outside[4:24, 4:24] = False
        images = images.masked_fill(outside, 0.0)
    return images, torch.randint(0, 10, (count, 32), generator=generator)


def report(results: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kdrun bench --switches: per training step, R4 models, batch 32 (median over steps, range over processes)",
                  title_justify="left")
    columns = ("switch", "model", "CPU ms on", "CPU ms off", "CPU off/on", "wall ms on", "wall ms off", "wall off/on", "faults on / off")
    for column in columns:
        table.add_column(column, justify="left" if column in ("switch", "model") else "right")
    for switch, sides in results.items():
        cells = [switch, WORKLOADS[switch][0]]
        for key in ("cpu_ms", "wall_ms"):
            on, off = ([run[key] for run in sides[side]] for side in ("on", "off"))
            cells += [f"{min(on):.2f}-{max(on):.2f}", f"{min(off):.2f}-{max(off):.2f}", f"{statistics.median(off) / statistics.median(on):.2f}x"]
        faults = [statistics.median(run["faults"] for run in sides[side]) for side in ("on", "off")]
        cells.append(f"{faults[0]:.0f} / {faults[1]:.0f}")
        table.add_row(*cells)
    Console(width=160).print(table)
    print(f"{torch.get_num_threads()} threads, {len(sides['on'])} processes per side of {TIMED_STEPS} timed steps each")


if __name__ == "__main__":  # one side of one measurement, in its own process
    name, side = sys.argv[1], sys.argv[2]
    steps = step_times(name, side == "on")
    print(json.dumps({key: statistics.median(step[index] for step in steps) for index, key in enumerate(("cpu_ms", "wall_ms", "faults"))}))
