"""Decoding image files into the uint8 (N, C, H, W) tensors every kdrun dataset is held as.

Images are decoded once, resized to a square `image_size` and kept in memory, so training never
touches the disk again. JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale straight away
(much cheaper than full decoding for big photos); threads overlap decoding because Pillow releases
the GIL while it works.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from kdrun.errors import ConfigError

log = logging.getLogger(__name__)

DECODE_THREADS = 2


def decode_image(path: Path, image_size: int) -> np.ndarray | None:
    """One file as an (image_size, image_size, 3) uint8 array, or None when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.draft("RGB", (image_size, image_size))  # JPEG only: decode at a reduced scale
            rgb = image.convert("RGB")
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def decode_images(paths: list[Path], image_size: int, skip_bad_files: bool) -> tuple[torch.Tensor, list[int]]:
    """(uint8 images (N, 3, S, S), positions in `paths` that decoded) for a list of files.

    Raises:
        ConfigError: naming the first file that cannot be decoded, unless `skip_bad_files`.
    """
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        arrays = list(pool.map(lambda path: decode_image(path, image_size), paths))
    kept = [index for index, array in enumerate(arrays) if array is not None]
    for index, array in enumerate(arrays):
        if array is None and not skip_bad_files:
            raise ConfigError(
                f"cannot read image file {paths[index]}",
                "remove or replace it, or set dataset.skip_bad_files=true to skip unreadable files",
            )
        if array is None:
            log.warning("skipping unreadable image file %s", paths[index])
    if not kept:
        return torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8), kept
    stacked = np.stack([arrays[index] for index in kept])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(), kept


def resize_uint8(images: torch.Tensor, image_size: int | None, chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to image_size squared (antialiased bilinear); None keeps them."""
    if image_size is None or tuple(images.shape[2:]) == (image_size, image_size):
        return images
    output = torch.empty(images.shape[0], images.shape[1], image_size, image_size, dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float()
        resized = functional.interpolate(part, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        output[start : start + chunk] = resized.round().clamp(0, 255).to(torch.uint8)
    return output


def check_image_size(image_size: int | None) -> None:
    if image_size is not None and image_size < 1:
        raise ConfigError(f"dataset.image_size={image_size} must be >= 1", "e.g. dataset.image_size=224")
