"""PNG grids of samples: the same starting noise in every grid, so rows show how quality changes with steps."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from kdrun.files import write_bytes_atomic

MIN_CELL_PIXELS = 32  # small images (8x8 digits) are enlarged, without smoothing, to stay visible


def grid_image(pixels: torch.Tensor, columns: int = 8) -> torch.Tensor:
    """uint8 (N, C, H, W) -> one uint8 (H', W', C) image: a `columns`-wide grid with 1-cell-pixel gaps."""
    from torchvision.utils import make_grid

    scale = max(1, math.ceil(MIN_CELL_PIXELS / pixels.shape[-1]))
    enlarged = pixels.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(enlarged, nrow=min(columns, len(pixels)), padding=max(1, scale // 2), pad_value=128)
    return grid.permute(1, 2, 0).contiguous()


def save_grid(pixels: torch.Tensor, path: Path, columns: int = 8) -> None:
    """Write the grid of `pixels` as a PNG, atomically (grey images stay single-channel)."""
    from PIL import Image

    image = grid_image(pixels, columns).numpy()
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
