"""timm's model zoo by name: `teacher=timm teacher.model=resnet18 teacher.weights=/path/model.safetensors`.

`timm.create_model` is the one door (num_classes and in_chans come from the dataset). Pretrained
weights go through timm's own loader, which adapts them as timm users expect: the first convolution
to the data's channels, a new classifier when the class count differs. `weights=DEFAULT` downloads
them from the Hugging Face hub; offline, a local file of the same architecture (ImageNet classes)
is the way, and the download error says where to fetch it. Other keys (`teacher.drop_rate=0.1`,
`teacher.img_size=32` for ViTs) go to `create_model` unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from torch import nn

from kdrun.errors import ConfigError, exception_line
from kdrun.files import read_state_dict
from kdrun.models.custom import probe
from kdrun.models.registry import MODELS
from kdrun.registry import closest_hint

HUB = "DEFAULT"  # weights=DEFAULT: timm's pretrained weights from the Hugging Face hub (as torchvision's DEFAULT)


def require_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("teacher/student=timm needs the timm package, which is not installed", "pip install 'kdrun[timm]'") from None
    return timm


def pretrained_options(timm: Any, name: str, weights: Optional[str]) -> dict[str, Any]:
    """create_model's arguments for no weights, the hub's, or a local file."""
    if weights in (None, "", "none"):
        return {"pretrained": False}
    if weights == HUB:
        return {"pretrained": True}
    path = Path(str(weights)).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"timm model {name}: weights file {path} does not exist", f"check the path, or weights={HUB} to download")
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}


def download_hint(timm: Any, name: str) -> str:
    config = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(config, "hf_hub_id", None) if config is not None else None
    where = f"https://huggingface.co/{hub_id}" if hub_id else f"timm's {name} weights"
    return f"offline: download {where} (model.safetensors) elsewhere and pass weights=/path/to/model.safetensors"


def check_file_fits(model: nn.Module, path: Path, name: str, classifier: tuple[str, ...]) -> None:
    """timm loads a file non-strictly when it replaces the classifier; a wrong file must not pass silently."""
    saved = set(read_state_dict(path, f"timm model {name} weights"))
    expected = set(model.state_dict())
    is_head = lambda key: any(key.startswith(prefix + ".") for prefix in classifier)  # noqa: E731
    missing = sorted(key for key in expected - saved if not is_head(key))
    unexpected = sorted(key for key in saved - expected if not is_head(key))
    if missing or unexpected:
        raise ConfigError(f"timm model {name}: weights file {path} is for another architecture "
                          f"(missing keys {missing[:3]}, unexpected keys {unexpected[:3]})", "pass the weights of this timm model")


@MODELS.register("timm")
def build_timm(input_shape: tuple[int, int, int], num_classes: int, /, model: str = "???", weights: Optional[str] = None,
               **arguments: Any) -> nn.Module:
    """timm.create_model(model, num_classes, in_chans, pretrained from the hub or a file, **arguments)."""
    timm = require_timm()
    if model in (None, "", "???") or not timm.is_model(model):
        hint = closest_hint(str(model), timm.list_models()) if model not in (None, "", "???") else ""
        raise ConfigError(f"unknown timm model '{model}'", f"{hint}set model= to a name from timm.list_models()")
    pretrained = pretrained_options(timm, model, weights)
    what = f"timm model {model}"
    logging.getLogger("timm").setLevel(logging.WARNING)  # its per-load info lines are not the user's business
    try:
        built = timm.create_model(model, num_classes=num_classes, in_chans=input_shape[0], **pretrained, **arguments)
    except OSError as error:  # no network, no hub cache entry (huggingface_hub's errors are OSErrors)
        if weights == HUB:
            raise ConfigError(f"cannot download timm's {model} weights ({exception_line(error, 120)})", download_hint(timm, model)) from None
        raise ConfigError(f"{what}: weights {weights} are unreadable ({exception_line(error, 120)})",
                          "pass a .safetensors or state_dict file") from None
    except Exception as error:  # noqa: BLE001 - timm raises TypeError/RuntimeError/AssertionError on bad arguments or files
        shown = ", ".join(f"{key}={value}" for key, value in sorted(arguments.items()))
        source = f" with weights {weights}" if weights not in (None, "", "none") else ""
        raise ConfigError(f"{what}({shown}){source} does not build ({exception_line(error)})",
                          "check its options, and that the weights are this model's; other keys go to timm.create_model") from None
    if "pretrained_cfg_overlay" in pretrained:
        classifier = built.pretrained_cfg.get("classifier") or ()
        check_file_fits(built, Path(pretrained["pretrained_cfg_overlay"]["file"]),
                        model, (classifier,) if isinstance(classifier, str) else tuple(classifier))
    probe(built, input_shape, num_classes, what)
    return built


def timm_identity(options: dict[str, Any]) -> dict[str, Any]:
    """timm's version: an architecture may change between timm releases under the same name."""
    return {"timm_version": require_timm().__version__}


build_timm.identity = timm_identity  # type: ignore[attr-defined]  (read by kdrun.models.identity)
