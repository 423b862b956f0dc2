"""The reference: recipe R4 written the way the recipes write it, in plain PyTorch.

A Dataset of PIL images with `ToTensor()` behind a `DataLoader` (batch 32, shuffled), the default
(for-loop) Adam, and the teacher run online in every distillation step. Same models, split,
epochs, batch size, learning rate and loss as kdrun's path, so only the engineering differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdrun.data.base import DataSplits, Split


class PilImages(Dataset):
    """Like torchvision's MNIST: uint8 array -> PIL image -> transform, one sample at a time."""

    def __init__(self, split: Split, transform: transforms.Compose) -> None:
        self.images = split.images[:, 0].numpy()  # (N, H, W); single-channel MNIST-like data
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index], mode="L")), self.labels[index]


@dataclass
class ReferencePhase:
    seconds: float
    samples: int
    test_acc: float


def loaders(data: DataSplits, batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(PilImages(data.train, transform), batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(PilImages(data.test, transform), batch_size=batch_size)
    return train, test


def train_reference(
    model: nn.Module, train: DataLoader, test: DataLoader, epochs: int, lr: float,
    teacher: nn.Module | None = None, temperature: float = 1.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
) -> ReferencePhase:
    """The recipe's loop: loss = ce_weight * CE + kd_weight * KL_batchmean(T) with the teacher online."""
    started = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    samples = 0
    for _ in range(epochs):
        model.train()
        for inputs, targets in train:
            logits = model(inputs)
            loss = ce_weight * functional.cross_entropy(logits, targets)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                loss = loss + kd_weight * nn.KLDivLoss(reduction="batchmean")(
                    functional.log_softmax(logits / temperature, dim=1), functional.softmax(teacher_logits / temperature, dim=1)
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            samples += len(targets)
    return ReferencePhase(time.perf_counter() - started, samples, accuracy(model, test))


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, targets in loader:
            correct += (model(inputs).argmax(dim=1) == targets).sum().item()
            total += len(targets)
    return correct / total
