"""Model architectures, registered by name. Family modules are imported by name to register them."""

from kdrun.models import cifar_resnet, cifar_vgg, custom, lenet, mlp, small_cnn, timm_models, tiny_cnn, torchvision_models, vit, wrn  # noqa: F401,E501  (registration side effect)
from kdrun.models.registry import MODELS, build_model, check_output, count_parameters

__all__ = ["MODELS", "build_model", "check_output", "count_parameters"]
