"""Bring your own model: custom `_target_` modules and timm models as teacher and student."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import TINY, read_summary, run_kdrun
from kdrun.commands.hydra_app import open_group_overrides
from kdrun.errors import ConfigError
from kdrun.models import build_model
from kdrun.models.custom import DATASET_PARAMETERS, dataset_arguments, locate
from kdrun.models.identity import architecture_identity

NETS = '''
from torch import nn


class MyNet(nn.Module):
    """An MLP that asks kdrun for in_features and num_classes."""

    def __init__(self, in_features, num_classes, width=32, depth=2):
        super().__init__()
        layers, size = [nn.Flatten()], in_features
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(size, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def conv_net(in_channels, num_classes, channels=4):
    """A factory function, not a class."""
    return nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(channels, num_classes))


class FiveWay(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


class RGBOnly(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def not_a_module():
    return 42


def broken(num_classes):
    raise ValueError("width must be even")
'''


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch) -> Path:
    """A package `mynets` in tmp_path (on sys.path here, on PYTHONPATH for CLI runs)."""
    package = tmp_path / "userpkg" / "mynets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(package.parent))
    for name in [name for name in sys.modules if name.split(".")[0] == "mynets"]:  # another test's copy
        monkeypatch.delitem(sys.modules, name)
    return package.parent


def custom(target: str, shape=(1, 8, 8), classes=10, **options) -> nn.Module:
    return build_model("custom", shape, classes, _target_=target, **options)


def test_dataset_fills_the_parameters_the_signature_names(user_package):
    model = custom("mynets.nets.MyNet", width=7)
    assert model.body[1].in_features == 64 and model.body[1].out_features == 7 and model.head.out_features == 10
    net = custom("mynets.nets.conv_net", shape=(3, 5, 5), classes=4)  # a factory: in_channels, num_classes
    assert net[0].in_channels == 3 and net(torch.zeros(1, 3, 5, 5)).shape == (1, 4)


def test_dataset_parameter_values():
    def factory(num_classes, in_channels, in_chans, input_shape, image_size, img_size, in_features, other=1):
        return None

    filled = dataset_arguments(factory, (3, 4, 6), 5, {}, "x")
    assert filled == {"num_classes": 5, "in_channels": 3, "in_chans": 3, "input_shape": (3, 4, 6),
                      "image_size": (4, 6), "img_size": (4, 6), "in_features": 72}
    assert set(filled) == set(DATASET_PARAMETERS)
    assert dataset_arguments(factory, (1, 8, 8), 5, {"image_size": 8}, "x")["image_size"] == 8  # square: H
    assert dataset_arguments(factory, (1, 8, 8), 5, {"num_classes": 5}, "x")["num_classes"] == 5  # agreeing: fine


@pytest.mark.parametrize("target, options, expected", [
    ("nope.nets.Net", {}, "custom model 'nope.nets.Net' cannot be imported (no module nope)"),
    ("mynets.nets.Missing", {}, "mynets.nets has no attribute 'Missing'"),
    ("MyNet", {}, "is not a dotted path"),
    ("mynets.nets.MyNet", {"bogus": 1}, "does not build (TypeError: MyNet.__init__() got an unexpected keyword argument 'bogus')"),
    ("mynets.nets.broken", {}, "does not build (ValueError: width must be even)"),
    ("mynets.nets.not_a_module", {}, "returned a int, not a torch.nn.Module"),
    ("mynets.nets.FiveWay", {}, "maps a batch of 2 to shape (2, 5), expected (2, 10)"),
    ("mynets.nets.RGBOnly", {}, "fails on a batch of shape (2, 1, 8, 8) (RuntimeError: Given groups=1"),
    ("mynets.nets.MyNet", {"num_classes": 3}, "num_classes=3 disagrees with the dataset (num_classes=10)"),
    ("mynets.nets.MyNet", {"weights": "/nonexistent/w.safetensors"}, "weights file /nonexistent/w.safetensors does not exist"),
])
def test_bad_targets_are_one_line_config_errors(user_package, target, options, expected):
    with pytest.raises(ConfigError) as caught:
        custom(target, **options)
    assert expected in caught.value.one_line() and "\n" not in caught.value.one_line()


def test_a_module_that_fails_to_import_names_its_error(user_package):
    (user_package / "mynets" / "bad.py").write_text("import numpy_does_not_exist\n")
    with pytest.raises(ConfigError, match="importing mynets.bad .* failed .*numpy_does_not_exist"):
        locate("mynets.bad.Net")


def test_weights_from_safetensors_and_from_a_torch_state_dict(user_package, tmp_path):
    source = custom("mynets.nets.MyNet", width=5)
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = custom("mynets.nets.MyNet", width=5, weights=str(tmp_path / name))
        assert all(torch.equal(loaded.state_dict()[key], value) for key, value in source.state_dict().items())
    with pytest.raises(ConfigError, match="does not match the configured model"):
        custom("mynets.nets.MyNet", width=6, weights=str(tmp_path / "w.safetensors"))


def test_identity_follows_target_args_weights_content_and_source(user_package, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file({key: value.contiguous() for key, value in custom("mynets.nets.MyNet").state_dict().items()}, str(weights))
    options = {"_target_": "mynets.nets.MyNet", "width": 32, "weights": str(weights)}
    first = architecture_identity("custom", options)
    assert first["_target_"] == "mynets.nets.MyNet" and first["width"] == 32 and len(first["weights_sha256"]) == 64
    assert architecture_identity("custom", {**options, "width": 16}) != first
    assert architecture_identity("custom", {**options, "_target_": "mynets.nets.conv_net"}) != first
    save_file({"other": torch.zeros(1)}, str(weights))  # same path, other content
    second = architecture_identity("custom", options)
    assert second["weights_sha256"] != first["weights_sha256"]
    nets = user_package / "mynets" / "nets.py"
    nets.write_text(nets.read_text() + "\n# edited\n")
    assert architecture_identity("custom", options)["source_sha256"] != second["source_sha256"]
    assert architecture_identity("mlp", {"hidden": [4]}) == {"name": "mlp", "hidden": [4]}  # built-in models: keys unchanged


def test_plain_keys_of_an_open_model_group_become_additions():
    rewritten = open_group_overrides(["teacher=custom", "teacher._target_=a.B", "teacher.depth=3", "+teacher.x=1",
                                      "student=timm", "student.model=m", "student.drop_rate=0.1", "T=2"])
    assert rewritten == ["teacher=custom", "teacher._target_=a.B", "++teacher.depth=3", "+teacher.x=1",
                         "student=timm", "student.model=m", "++student.drop_rate=0.1", "T=2"]
    assert open_group_overrides(["teacher.hidden=[3]"]) == ["teacher.hidden=[3]"]  # built-in: Hydra checks the key


def test_custom_teacher_and_student_through_the_cli_with_a_feature_method(user_package, tmp_path):
    """Tapped by layer name (fitnets), cached by target and arguments: another width is another teacher."""
    common = [*TINY, "trainer.threads=1", "teacher=custom", "teacher._target_=mynets.nets.MyNet", "student=custom",
              "student._target_=mynets.nets.conv_net", "student.channels=3", "method=fitnets",
              "method.teacher_layer=body.2", "method.student_layer=1", f"cache_dir={tmp_path / 'cache'}"]
    env = {"PYTHONPATH": str(user_package)}
    result = run_kdrun("train", *common, "teacher.width=24", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path, extra_env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_summary(tmp_path / "a")
    assert summary["phases"]["teacher"]["params"] == 64 * 24 + 24 + 24 * 24 + 24 + 24 * 10 + 10
    assert summary["phases"]["distilled"]["params"] == 1 * 3 * 9 + 3 + 3 * 10 + 10
    assert set(load_file(str(tmp_path / "a" / "distilled.safetensors"))) == {"0.weight", "0.bias", "4.weight", "4.bias"}
    (meta,) = [json.loads(path.read_text()) for path in (tmp_path / "cache" / "teachers").glob("custom-*/meta.json")]
    assert meta["identity"]["model"]["_target_"] == "mynets.nets.MyNet" and meta["identity"]["model"]["width"] == 24
    result = run_kdrun("train", *common, "teacher.width=12", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path, extra_env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_summary(tmp_path / "b")["phases"]["teacher"]["source"] == "trained"
    assert len(list((tmp_path / "cache" / "teachers").glob("custom-*/meta.json"))) == 2


def test_cli_error_for_a_target_that_cannot_be_imported(tmp_path):
    result = run_kdrun("train", "teacher=custom", "teacher._target_=nowhere.Net", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "kdrun: error: custom model 'nowhere.Net' cannot be imported (no module nowhere) "
        "(put its package on PYTHONPATH or pip install it)")
    assert not (tmp_path / "r").exists()


# -- timm -------------------------------------------------------------------------------------------
@pytest.fixture
def timm():
    return pytest.importorskip("timm")  # the test extra installs it


def test_timm_model_by_name_sized_for_the_data(timm):
    model = build_model("timm", (1, 8, 8), 7, model="test_resnet")
    assert model.conv1[0].in_channels == 1 and model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    vit = build_model("timm", (3, 8, 8), 4, model="test_vit", img_size=8, patch_size=4)  # other keys go to create_model
    assert vit(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_timm_weights_from_a_local_file_adapted_to_channels_and_classes(timm, tmp_path):
    imagenet = timm.create_model("test_resnet")  # 1000 classes, RGB: the layout of a downloaded file
    path = tmp_path / "model.safetensors"
    save_file({key: value.contiguous() for key, value in imagenet.state_dict().items()}, str(path))
    model = build_model("timm", (1, 8, 8), 10, model="test_resnet", weights=str(path))
    state = model.state_dict()
    assert torch.equal(state["layer1.0.conv1.weight"], imagenet.state_dict()["layer1.0.conv1.weight"])
    assert torch.allclose(state["conv1.0.weight"], imagenet.state_dict()["conv1.0.weight"].sum(dim=1, keepdim=True))
    assert state["fc.weight"].shape == (10, imagenet.fc.in_features)
    other = tmp_path / "other.safetensors"
    save_file({key: value.contiguous() for key, value in timm.create_model("test_efficientnet").state_dict().items()}, str(other))
    with pytest.raises(ConfigError, match=f"with weights {other} does not build .*size mismatch"):
        build_model("timm", (1, 8, 8), 10, model="test_resnet", weights=str(other))
    renamed = {("renamed." + key if key.startswith("layer1.") else key): value.contiguous() for key, value in imagenet.state_dict().items()}
    save_file(renamed, str(other))  # timm loads non-strictly when it replaces the classifier: kdrun checks the keys
    with pytest.raises(ConfigError, match="is for another architecture .*missing keys \\['layer1"):
        build_model("timm", (1, 8, 8), 10, model="test_resnet", weights=str(other))


def test_timm_errors_name_the_fix(timm):
    with pytest.raises(ConfigError) as caught:
        build_model("timm", (1, 8, 8), 10, model="resnet_18")
    assert caught.value.one_line() == ("unknown timm model 'resnet_18' (did you mean 'resnet18'? "
                                       "set model= to a name from timm.list_models())")
    with pytest.raises(ConfigError, match=r"timm model test_vit fails on a batch of shape \(2, 1, 8, 8\)"):
        build_model("timm", (1, 8, 8), 10, model="test_vit")


def test_timm_teacher_and_student_through_the_cli_and_offline_download_error(timm, tmp_path):
    common = [*TINY, "teacher_epochs=1", "student_epochs=1", "dataset.max_train_samples=96", "trainer.threads=1",
              "teacher=timm", "teacher.model=test_resnet", f"cache_dir={tmp_path / 'cache'}"]
    result = run_kdrun("train", *common, "student=timm", "student.model=test_vit", "student.img_size=8",
                       "student.patch_size=4", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    phases = read_summary(tmp_path / "a")["phases"]
    assert phases["teacher"]["params"] == sum(p.numel() for p in timm.create_model("test_resnet", num_classes=10, in_chans=1).parameters())
    assert phases["distilled"]["params"] == phases["independent"]["params"]
    result = run_kdrun("train", *common, "teacher.weights=DEFAULT", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path,
                       extra_env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("kdrun: error: cannot download timm's test_resnet weights")
    assert "offline: download https://huggingface.co/timm/test_resnet.r160_in1k" in line and "weights=/path/to/model.safetensors" in line
