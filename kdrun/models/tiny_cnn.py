"""`tiny_cnn`: a minimal CNN with named 4D feature layers, for feature distillation (attention, activation_kl).

Layout (module paths usable as `method.student_layer` / `method.teacher_layer`):
    features.0 conv3x3, features.1 ReLU, features.2 maxpool, features.3 conv3x3, features.4 ReLU,
    pool (global average), classifier (linear). Works on any input of at least 2x2 pixels.
"""

from __future__ import annotations

from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.registry import MODELS


class TinyCNN(nn.Module):
    def __init__(self, channels: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, inputs):
        return self.classifier(self.pool(self.features(inputs)))


@MODELS.register("tiny_cnn")
def tiny_cnn(input_shape: tuple[int, int, int], num_classes: int, width: int = 8) -> TinyCNN:
    """Two conv blocks of `width` and 2*`width` channels, global average pooling, one linear layer."""
    if width < 1:
        raise ConfigError(f"tiny_cnn width={width} must be >= 1", "e.g. width: 8")
    return TinyCNN(input_shape[0], int(width), num_classes)
