"""Training-time augmentations (kdrun/data/augment.py), checked against a separate numpy translation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, read_summary
from kdrun.data.augment import build_augmentation
from kdrun.errors import ConfigError


def translated(image: np.ndarray, down: int, right: int) -> np.ndarray:
    """`image` (C, H, W) moved down/right by the given pixels (negative: up/left); vacated pixels are 0."""
    out = np.zeros_like(image)
    height, width = image.shape[-2:]
    source = image[:, max(0, -down): height - max(0, down), max(0, -right): width - max(0, right)]
    out[:, max(0, down): max(0, down) + source.shape[1], max(0, right): max(0, right) + source.shape[2]] = source
    return out


def marker_displacements(outputs: torch.Tensor, row: int, column: int) -> list[tuple[int, int]]:
    """Where the single bright pixel of each output is, relative to (row, column) in the input."""
    found = [torch.nonzero(output[0] == 255) for output in outputs]
    assert all(len(places) == 1 for places in found)  # the marker is neither lost nor duplicated
    return [(int(places[0, 0]) - row, int(places[0, 1]) - column) for places in found]


def test_shift_moves_each_image_by_its_drawn_offset_with_zero_fill():
    """A known draw: the generator's first randint(0, 2N+1, (2, count)) gives offsets o; the image moves by N - o."""
    pixels, seed = 2, 5
    images = torch.randint(1, 256, (8, 2, 7, 9), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    outputs = build_augmentation({"name": "shift", "pixels": pixels})(images, torch.Generator().manual_seed(seed))
    offsets = torch.randint(0, 2 * pixels + 1, (2, len(images)), generator=torch.Generator().manual_seed(seed))
    assert outputs.shape == images.shape and outputs.dtype == torch.uint8
    moves = set()
    for image, output, (row_offset, column_offset) in zip(images, outputs, offsets.T.tolist()):
        down, right = pixels - row_offset, pixels - column_offset
        moves.add((down, right))
        np.testing.assert_array_equal(output.numpy(), translated(image.numpy(), down, right))
    assert len(moves) > 4 and any(down != 0 and right != 0 for down, right in moves)  # the check saw real shifts


def test_shift_stays_within_n_pixels_and_reaches_every_offset():
    images = torch.zeros(2000, 1, 11, 11, dtype=torch.uint8)
    images[:, 0, 5, 5] = 255
    moves = marker_displacements(build_augmentation({"name": "shift", "pixels": 2})(images, torch.Generator().manual_seed(0)), 5, 5)
    assert max(max(abs(down), abs(right)) for down, right in moves) == 2
    assert set(moves) == {(down, right) for down in range(-2, 3) for right in range(-2, 3)}


def test_shift_never_flips_and_pixels_moved_out_are_gone():
    """A marker in the top-left corner: moved up or left it leaves the image (no wrap-around, no mirror)."""
    images = torch.zeros(400, 1, 6, 6, dtype=torch.uint8)
    images[:, 0, 0, 0] = 255
    outputs = build_augmentation("shift")(images, torch.Generator().manual_seed(3))
    kept = outputs.flatten(1).amax(1) == 255
    assert 0 < int(kept.sum()) < len(images) and set(outputs.unique().tolist()) == {0, 255}
    assert all(down >= 0 and right >= 0 for down, right in marker_displacements(outputs[kept], 0, 0))


def test_shift_is_deterministic_per_seed():
    images = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    augment = build_augmentation("shift")
    first = augment(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(8)))
    stream = torch.Generator().manual_seed(7)
    augment(images, stream)
    assert not torch.equal(first, augment(images, stream))  # the next batch of a run gets new offsets


@pytest.mark.parametrize("spec, message", [
    ({"name": "shift", "pixels": 0}, "must be an integer >= 1"),
    ({"name": "shift", "pixels": 1.5}, "must be an integer >= 1"),
    ({"pixels": 2}, "has no 'name'"),
    ({"name": "shift", "pixel": 2}, "no option 'pixel'"),
    ("shfit", "did you mean 'shift'"),
])
def test_bad_augmentation_specs_are_config_errors(spec, message: str):
    with pytest.raises(ConfigError) as error:
        build_augmentation(spec)
    assert message in f"{error.value.message} {error.value.hint}"


def test_dataset_augment_takes_a_shift_with_options_from_the_command_line(kdrun_in, tmp_path: Path):
    result, run_dir = kdrun_in("dataset.augment={name:shift,pixels:1}", "teacher.hidden=[16]", *TINY)
    assert result.returncode == 0, result.stderr
    assert read_summary(run_dir)["status"] == "completed"
    assert "teacher logits not cached: random augmentation" in (run_dir / "train.log").read_text()
