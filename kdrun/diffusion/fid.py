"""FID with torchmetrics, on Inception-v3 features (standard) or on a classifier's features (offline).

torchmetrics' FrechetInceptionDistance accepts any feature network; it accumulates feature sums
in float64 and computes ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)). The standard FID
uses Inception-v3 pool features (torch-fidelity's port of the TF weights), which cannot be
downloaded here; without them kdrun measures the Frechet distance on the penultimate features of
a classifier trained on the same data. The two are not comparable: tables and docs say which one
a number is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from kdrun.errors import ConfigError

log = logging.getLogger("kdrun")

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
DOWNLOAD_TIMEOUT_SECONDS = 20


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 pixels, as a PNG would store them (real and generated images alike)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> [-1, 1] floats, the scale the diffusion models work on."""
    return images.float() / 127.5 - 1


class ClassifierFeatures(nn.Module):
    """uint8 images -> the input of the classifier's last Linear layer (its penultimate features)."""

    def __init__(self, classifier: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        linears = [module for module in classifier.modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ConfigError(f"the FID classifier {type(classifier).__name__} has no Linear layer to take features from",
                              "pick a classifier with a linear head, e.g. fid.classifier.name=small_cnn")
        self.layer = linears[-1]
        self.num_features = self.layer.in_features
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)  # a fixed measuring instrument: never in training mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].flatten(1)))
        try:
            self.classifier((images.float() / 255 - self.mean) / self.std)
        finally:
            handle.remove()
        return captured[0]


class GreyToRgb(nn.Module):
    """Inception expects 3 channels: a grey image is repeated (the usual practice for MNIST FIDs)."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception
        self.num_features = 2048

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception(images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images)


def inception_features(weights: Optional[Path]) -> nn.Module:
    """torchmetrics' Inception-v3 (pool3, 2048-d) from a local weights file, or downloaded when `weights` is None.

    torch-fidelity unpickles the file without restrictions, so it is first read with
    weights_only=True: only a plain state dict gets through.

    Raises:
        ConfigError: missing file, not a state dict, not Inception-v3 weights, or no download possible.
    """
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as error:
        raise ConfigError(f"standard FID needs torchmetrics and torch-fidelity ({error})", "pip install 'kdrun[diffusion]'") from None
    hint = f"download {INCEPTION_URL} (torch-fidelity's Inception-v3) and pass fid.inception_weights=/path/to/it"
    if weights is None:
        return GreyToRgb(_downloaded_inception(NoTrainInceptionV3, hint))
    if not weights.is_file():
        raise ConfigError(f"fid.inception_weights={weights} does not exist", hint)
    try:
        torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for files that are not plain weights
        raise ConfigError(f"fid.inception_weights={weights} is not a plain weights file ({' '.join(str(error).split())[:120]})", hint) from None
    try:
        return GreyToRgb(NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)))
    except RuntimeError as error:
        raise ConfigError(f"fid.inception_weights={weights} are not Inception-v3 weights ({' '.join(str(error).split())[:120]})", hint) from None


def _downloaded_inception(inception_class: type, hint: str) -> nn.Module:
    """torch-fidelity's download into torch.hub's cache (reused later); its progress output is kept off the console."""
    log.info("downloading the Inception-v3 weights from %s", INCEPTION_URL)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)  # torch.hub's urlopen has no timeout of its own
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return inception_class(name="inception-v3-compat", features_list=["2048"])
    except (OSError, RuntimeError, ValueError) as error:
        raise ConfigError(f"cannot download the Inception-v3 weights for the standard FID ({' '.join(str(error).split())[:120]})", hint) from None
    finally:
        socket.setdefaulttimeout(previous)


@dataclass
class FidResult:
    value: float
    samples: int


class FidScorer:
    """Reference statistics once, then one FID per set of generated images (torchmetrics, float64 sums)."""

    def __init__(self, features: nn.Module, reference: torch.Tensor, batch_size: int, device: torch.device) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.batch_size = batch_size
        self.device = device
        self.metric = FrechetInceptionDistance(feature=features, reset_real_features=False, normalize=False).to(device)
        self.reference_count = len(reference)
        self._add(reference, real=True)

    def score(self, images: torch.Tensor) -> FidResult:
        """FID of uint8 `images` (N, C, H, W) against the reference."""
        self.metric.reset()  # drops the generated statistics only (reset_real_features=False)
        self._add(images, real=False)
        return FidResult(float(self.metric.compute()), len(images))

    @torch.inference_mode()
    def _add(self, images: torch.Tensor, real: bool) -> None:
        for chunk in images.split(self.batch_size):
            self.metric.update(chunk.to(self.device), real=real)
