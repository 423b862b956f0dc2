"""Progressive distillation's pieces against independent computations (kdrun/diffusion/).

The two-step target is checked against a float64 hand computation written out separately in plain
Python (math, scalars) for a linear teacher; the loss's gradient against its hand-derived formula;
kdrun's DDIM step against diffusers' DDIMScheduler; FID against scipy's matrix square root.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from kdrun.diffusion.schedule import CosineSchedule, halving_steps, time_grid, v_from_x
from kdrun.diffusion.target import ddim_step, distillation_terms, two_step_target, weighted_x_loss
from kdrun.diffusion.training import PhaseSettings, distill_round, student_from
from kdrun.errors import ConfigError

SCHEDULE = CosineSchedule(-20.0, 20.0)


class LinearTeacher(nn.Module):
    """v(z, t) = (c0 + c1 t) z: every DDIM step is linear in z, so the target can be worked out by hand."""

    def __init__(self, c0: float = 0.3, c1: float = 0.5, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.c0 = nn.Parameter(torch.tensor(c0, dtype=dtype))
        self.c1 = nn.Parameter(torch.tensor(c1, dtype=dtype))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self.c0 + self.c1 * t.to(z.dtype).view(-1, 1, 1, 1)) * z


# -- the hand computation: scalars, math module, written from the paper's equations ------------------
def hand_alpha_sigma(t: float) -> tuple[float, float]:
    if t == 0:
        return 1.0, 0.0
    b = math.atan(math.exp(-10.0))
    a = math.atan(math.exp(10.0)) - b
    logsnr = -2 * math.log(math.tan(a * t + b))
    return math.sqrt(1 / (1 + math.exp(-logsnr))), math.sqrt(1 / (1 + math.exp(logsnr)))


def hand_x(z: float, t: float, c0: float = 0.3, c1: float = 0.5) -> float:
    alpha, sigma = hand_alpha_sigma(t)
    return alpha * z - sigma * (c0 + c1 * t) * z


def hand_ddim(z: float, t: float, s: float) -> float:
    """z_s = alpha_s x + (sigma_s / sigma_t)(z_t - alpha_t x), the paper's DDIM update."""
    alpha_t, sigma_t = hand_alpha_sigma(t)
    alpha_s, sigma_s = hand_alpha_sigma(s)
    x = hand_x(z, t)
    return alpha_s * x + sigma_s / sigma_t * (z - alpha_t * x)


def hand_target(z: float, t: float, steps: int) -> float:
    middle, end = t - 0.5 / steps, t - 1.0 / steps
    z_end = hand_ddim(hand_ddim(z, t, middle), middle, end)
    alpha_t, sigma_t = hand_alpha_sigma(t)
    alpha_end, sigma_end = hand_alpha_sigma(end)
    return (z_end - sigma_end / sigma_t * z) / (alpha_end - sigma_end / sigma_t * alpha_t)


@pytest.mark.parametrize("steps, index", [(4, 4), (4, 3), (8, 1), (1, 1), (64, 17)])
def test_two_step_target_matches_the_float64_hand_computation(steps, index):
    t = index / steps
    z = torch.tensor([0.7, -1.3], dtype=torch.float64).view(2, 1, 1, 1)
    target = two_step_target(LinearTeacher(), z, torch.full((2,), t, dtype=torch.float64), steps, SCHEDULE)
    expected = [hand_target(value, t, steps) for value in (0.7, -1.3)]
    assert target.flatten().tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_one_student_step_with_the_target_lands_where_two_teacher_steps_land():
    """The target's defining property (Algorithm 2): student DDIM t -> t - 1/N == teacher DDIM twice."""
    teacher, steps = LinearTeacher(), 8
    z = torch.randn(5, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1.0, 7 / 8, 0.5, 2 / 8, 1 / 8], dtype=torch.float64)
    two = ddim_step(teacher, ddim_step(teacher, z, t, t - 0.5 / steps, SCHEDULE), t - 0.5 / steps, t - 1 / steps, SCHEDULE)

    def composed_student(z_t, t_student):
        alpha, sigma = SCHEDULE.alpha_sigma(t_student)
        return v_from_x(z_t, two_step_target(teacher, z_t, t_student.double(), steps, SCHEDULE), alpha, sigma)

    one = ddim_step(composed_student, z, t, t - 1 / steps, SCHEDULE)
    assert torch.allclose(one, two, rtol=1e-9, atol=1e-12)


def test_a_student_equal_to_the_composed_teacher_has_zero_loss_and_another_does_not():
    teacher, steps = LinearTeacher(), 4
    images = torch.rand(16, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def composed_student(z_t, t):
        alpha, sigma = SCHEDULE.alpha_sigma(t)
        return v_from_x(z_t, two_step_target(teacher, z_t, t.double(), steps, SCHEDULE), alpha, sigma)

    zero = distillation_terms(composed_student, teacher, images, steps, SCHEDULE, torch.Generator().manual_seed(2))
    other = distillation_terms(LinearTeacher(0.31, 0.5), teacher, images, steps, SCHEDULE, torch.Generator().manual_seed(2))
    assert zero["distill"].detach().item() < 1e-20
    assert other["distill"].detach().item() > 1e-6


def test_the_loss_weight_is_max_snr_1_and_its_gradient_matches_the_hand_derivative():
    """L = mean_b max(SNR_b, 1) mean_pixels (alpha z - sigma (c0 + c1 t) z - x_target)^2, differentiated by hand."""
    z = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    target = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.1, 0.4, 0.6, 0.95], dtype=torch.float64)  # SNR above and below 1
    student = LinearTeacher(0.2, -0.4)
    loss = weighted_x_loss(student, z, t, target, SCHEDULE)
    loss.backward()
    value, grad_c0, grad_c1 = 0.0, 0.0, 0.0
    for b in range(4):
        alpha, sigma = hand_alpha_sigma(float(t[b]))
        weight = max(alpha**2 / sigma**2, 1.0)
        for zz, xx in zip(z[b].flatten().tolist(), target[b].flatten().tolist()):
            residual = alpha * zz - sigma * (0.2 - 0.4 * float(t[b])) * zz - xx
            value += weight * residual**2 / 4 / 4
            grad_c0 += weight * 2 * residual * (-sigma * zz) / 4 / 4
            grad_c1 += weight * 2 * residual * (-sigma * float(t[b]) * zz) / 4 / 4
    assert loss.detach().item() == pytest.approx(value, rel=1e-10)
    assert float(student.c0.grad) == pytest.approx(grad_c0, rel=1e-10)
    assert float(student.c1.grad) == pytest.approx(grad_c1, rel=1e-10)


def test_the_teacher_gets_no_gradient_from_the_distillation_loss():
    teacher, student = LinearTeacher(), LinearTeacher(0.25, 0.5)
    images = torch.rand(8, 1, 2, 2, dtype=torch.float64) * 2 - 1
    distillation_terms(student, teacher, images, 4, SCHEDULE, torch.Generator().manual_seed(0))["distill"].backward()
    assert teacher.c0.grad is None and teacher.c1.grad is None
    assert student.c0.grad is not None


# -- schedule and time grids ------------------------------------------------------------------------
def test_the_schedule_matches_cos_sin_and_ends_at_the_data():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    assert alpha.tolist()[:3] == pytest.approx([1.0, math.cos(math.pi / 8), math.cos(math.pi / 4)], abs=1e-4)
    assert sigma[0] == 0 and alpha[0] == 1
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(4, dtype=torch.float64))
    assert float(SCHEDULE.logsnr(torch.tensor([1.0]))) == pytest.approx(-20.0)


def test_halving_builds_the_step_counts_and_nested_time_grids():
    assert halving_steps(64, 1) == [64, 32, 16, 8, 4, 2, 1]
    assert halving_steps(12, 3) == [12, 6, 3]
    assert halving_steps(8, 8) == [8]
    assert time_grid(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    for steps in (1, 2, 4, 8):
        fine = time_grid(2 * steps)
        assert torch.equal(fine[::2], time_grid(steps))           # the student's times are the teacher's
        middles = time_grid(steps)[:-1] - 0.5 / steps               # where Algorithm 2 puts the middle step
        assert torch.allclose(fine[1::2], middles)


@pytest.mark.parametrize("start, target, message", [
    (64, 3, "not reached by halving"), (6, 4, "not reached by halving"), (4, 8, "not reached by halving"),
    (0, 1, "teacher.sampling_steps=0 must be >= 1"), (8, 0, "distill.target_steps=0 must be >= 1"),
])
def test_unreachable_or_invalid_step_counts_are_config_errors(start, target, message):
    with pytest.raises(ConfigError, match=message):
        halving_steps(start, target)


# -- config checks (in-process: composing takes milliseconds, a CLI subprocess seconds) ------------------
@pytest.fixture(scope="module")
def compose_diffusion():
    from hydra import compose, initialize_config_dir

    from kdrun.config import config_dir
    from kdrun.diffusion.config import register_schema

    register_schema()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        yield lambda *overrides: compose("diffusion", overrides=list(overrides))


@pytest.mark.parametrize("override, message", [
    ("teacher.sampling_steps=0", "teacher.sampling_steps=0 must be >= 1"),
    ("distill.target_steps=0", "distill.target_steps=0 must be >= 1"),
    ("distill.target_steps=128", "distill.target_steps=128 is not reached by halving teacher.sampling_steps=32"),
    ("fid.features=everything", "fid.features=everything is not one of auto, classifier, inception"),
    ("+fid.bogus=1", "unknown config key 'fid.bogus'"),
    ("fid.samples=1", "fid.samples=1 must be >= 2"),
    ("grid_samples=2000", "grid_samples=2000 must be in [1, fid.samples=1000]"),
    ("teacher.ema_decay=1", "teacher.ema_decay=1.0 is outside [0, 1)"),
    ("distill.lr=0", "distill.lr=0.0 must be > 0"),
    ("trainer.threads=0", "trainer.threads=0 must be auto or an integer >= 1"),
])
def test_config_checks_name_the_key_and_the_fix(compose_diffusion, override, message):
    from kdrun.diffusion.config import validate

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_diffusion(override))


@pytest.mark.parametrize("dataset, steps", [("digits", [32, 16, 8, 4, 2, 1]), ("mnist", [32, 16, 8, 4, 2, 1]),
                                            ("cifar10", [1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1])])
def test_every_preset_composes_validates_and_builds_its_network(compose_diffusion, dataset, steps):
    from kdrun.diffusion.config import validate
    from kdrun.diffusion.networks import build_network

    cfg = compose_diffusion(f"dataset={dataset}")
    assert validate(cfg) == steps
    shape = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[dataset]
    options = {key: value for key, value in cfg.network.items() if key not in ("name", "checkpoint")}
    network = build_network(cfg.network.name, shape, **options)
    with torch.no_grad():
        assert network(torch.zeros(2, *shape), torch.tensor([0.5, 1.0])).shape == (2, *shape)


@pytest.mark.parametrize("options, message", [
    ({"channels": (32, 64), "attention": (True,)}, "network.attention has 1 entries, network.channels 2"),
    ({"channels": (30, 64), "attention": (False, False)}, "are not all multiples of network.norm_groups=8"),
    ({"channels": (8,) * 5, "attention": (False,) * 5}, "8x8 images cannot be halved 4 times"),
])
def test_unet_shape_rules_are_config_errors(options, message):
    from kdrun.diffusion.networks import unet

    with pytest.raises(ConfigError, match=message):
        unet((1, 8, 8), **options)


# -- DDIM: kdrun's step against diffusers', determinism -----------------------------------------------
def test_kdrun_ddim_agrees_with_diffusers_ddim_scheduler_at_every_step_count():
    from kdrun.diffusion.sampler import DdimSampler

    teacher = LinearTeacher(dtype=torch.float32)
    sampler = DdimSampler(SCHEDULE, 16)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    for steps in (16, 8, 4, 2, 1):
        assert torch.allclose(sampler.times(steps), time_grid(steps)[:-1])
        z = noise
        grid = time_grid(steps)
        with torch.no_grad():
            for t, s in zip(grid[:-1], grid[1:]):
                z = ddim_step(teacher, z, t.repeat(3), s.repeat(3), SCHEDULE, clip=True)
        assert torch.allclose(sampler.sample(teacher, noise, steps), z, atol=2e-5), steps


def test_ddim_sampling_with_a_unet_teacher_is_deterministic():
    from kdrun.diffusion.networks import unet
    from kdrun.diffusion.sampler import DdimSampler, fixed_noise

    torch.manual_seed(0)
    network = unet((1, 8, 8), channels=(8, 16), attention=(False, True), norm_groups=4, dropout=0.1).eval()
    sampler = DdimSampler(SCHEDULE, 8)
    first = sampler.sample(network, fixed_noise(4, (1, 8, 8), seed=3), 8)
    second = sampler.sample(network, fixed_noise(4, (1, 8, 8), seed=3), 8)
    assert torch.equal(first, second)
    assert first.abs().max() <= 1.0 + 1e-6  # x_hat is clipped, and the last step returns it


# -- rounds: the student starts as the teacher, the teacher is never touched -------------------------
class NormTeacher(nn.Module):
    """A tiny denoiser with BatchNorm (buffers that move in train mode) and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.2), nn.Conv2d(4, 1, 3, padding=1))

    def forward(self, z, t):
        return self.body(torch.cat([z, t.view(-1, 1, 1, 1).expand_as(z)], dim=1))


class Quiet:
    def phase_started(self, *args): pass
    def step_done(self, *args): pass
    def phase_done(self, *args): pass


def test_the_student_starts_as_an_independent_copy_of_the_teacher():
    teacher = NormTeacher().eval().requires_grad_(False)
    student = student_from(teacher)
    for (name, ours), theirs in zip(student.state_dict().items(), teacher.state_dict().values()):
        assert torch.equal(ours, theirs), name
        assert ours.data_ptr() != theirs.data_ptr(), name
    assert student.training and all(parameter.requires_grad for parameter in student.parameters())
    assert student.body[2].p == 0.0 and teacher.body[2].p == 0.2


def test_a_distillation_round_leaves_the_teacher_unchanged_and_in_eval_mode():
    torch.manual_seed(0)
    teacher = NormTeacher()
    teacher.train()  # as a freshly trained teacher would be: the round must freeze it itself
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    images = torch.rand(32, 1, 4, 4) * 2 - 1
    settings = PhaseSettings(steps=5, batch_size=8, lr=1e-2, log_every=2)
    outcome = distill_round("distill_2", teacher, 2, images, settings, SCHEDULE, seed=0, observer=Quiet())
    after = teacher.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # parameters and BatchNorm buffers
    assert not teacher.training and not any(parameter.requires_grad for parameter in teacher.parameters())
    assert all(parameter.grad is None for parameter in teacher.parameters())
    changed = [name for name, value in outcome.model.state_dict().items() if not torch.equal(value, before[name])]
    assert changed  # the student did learn something
    assert set(outcome.loss) == {"distill"} and math.isfinite(outcome.loss["distill"])


# -- FID ------------------------------------------------------------------------------------------------
class Flatten2(nn.Module):
    """uint8 images (N, 1, 1, 2) -> their two pixel values as float64 features."""

    num_features = 2

    def forward(self, images):
        return images.flatten(1).double()


def test_fid_matches_the_frechet_formula_with_scipy_sqrtm():
    from scipy import linalg

    from kdrun.diffusion.fid import FidScorer

    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 200, (400, 1, 1, 2), generator=generator, dtype=torch.uint8)
    fake = (torch.randint(0, 120, (300, 1, 1, 2), generator=generator) + 60).to(torch.uint8)
    scorer = FidScorer(Flatten2(), real, batch_size=64, device=torch.device("cpu"))
    value = scorer.score(fake).value
    a, b = real.flatten(1).double().numpy(), fake.flatten(1).double().numpy()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert value == pytest.approx(expected, rel=1e-6)
    assert scorer.score(real).value == pytest.approx(0.0, abs=1e-6)  # the reference itself: distance 0


def test_classifier_features_are_the_input_of_its_last_linear_layer():
    from kdrun.diffusion.fid import ClassifierFeatures
    from kdrun.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 10, widths=(4, 8), hidden=6).eval()
    features = ClassifierFeatures(model, [0.5], [0.25])
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        expected = model[:-1]((images.float() / 255 - 0.5) / 0.25)
        assert torch.allclose(features(images), expected)
    assert features.num_features == 6
    features.train()
    assert not features.classifier.training  # a measuring instrument never trains


def test_a_missing_inception_weights_file_is_a_config_error():
    from pathlib import Path

    from kdrun.diffusion.fid import inception_features

    with pytest.raises(ConfigError, match="does not exist"):
        inception_features(Path("/nonexistent/weights-inception.pth"))


def test_sample_grid_png_has_the_expected_layout(tmp_path):
    from PIL import Image

    from kdrun.diffusion.grids import save_grid

    save_grid(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (8 * 32 + 9 * 2, 2 * 32 + 3 * 2)  # 8x8 enlarged 4x, 2-pixel gaps


def test_inception_without_weights_downloads_and_a_failed_download_is_a_config_error(monkeypatch):
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as inception_module

    from kdrun.diffusion.fid import INCEPTION_URL, inception_features

    requested = []

    def offline(url, **_):
        requested.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(inception_module, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="cannot download the Inception-v3 weights") as error:
        inception_features(None)
    assert requested == [INCEPTION_URL] and "fid.inception_weights=" in error.value.one_line()


@pytest.mark.slow  # a 95 MB weights file and Inception forwards at 299x299: ~10-40 s on 2 CPU cores
def test_local_inception_weights_give_2048_d_features_of_grey_images(monkeypatch, tmp_path):
    """Standard FID from a local weights file (random weights of the right architecture stand in for the real ones)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception_module

    from kdrun.diffusion.fid import FidScorer, inception_features

    with monkeypatch.context() as patch:
        patch.setattr(inception_module, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(inception_module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        state = inception_module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(state, tmp_path / "inception.pth")
    features = inception_features(tmp_path / "inception.pth")
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert features(images).shape == (3, 2048)
    assert FidScorer(features, images, batch_size=3, device=torch.device("cpu")).score(images).value == pytest.approx(0, abs=1e-2)
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="are not Inception-v3 weights"):
        inception_features(tmp_path / "other.pth")


def test_a_resume_with_another_config_is_refused(tmp_path):
    from kdrun.diffusion.checkpoint import PhaseCheckpoints

    PhaseCheckpoints(tmp_path, {"distill.train_steps": 400}, resume=False, interval_seconds=0).check_config()
    PhaseCheckpoints(tmp_path, {"distill.train_steps": 400}, resume=True, interval_seconds=0).check_config()
    with pytest.raises(ConfigError, match="the run has distill.train_steps=400, now 500"):
        PhaseCheckpoints(tmp_path, {"distill.train_steps": 500}, resume=True, interval_seconds=0).check_config()


def test_report_averages_seeds_and_pairs_the_difference_within_each_run():
    from kdrun.diffusion_results import DiffusionSummary, StepRow
    from kdrun.report.diffusion import cells, group_runs

    def run(seed: int, ddim: float, distilled: float, status: str = "completed") -> DiffusionSummary:
        rows = [StepRow(2, teacher_fid=ddim, distilled_fid=distilled, teacher_seconds_per_1000=1.0, distilled_seconds_per_1000=1.0)]
        return DiffusionSummary(status, f"run{seed}", seed, [f"seed={seed}", "trainer.threads=1", "cache_dir=c"],
                                dataset={"name": "digits"}, rows=rows)

    groups = group_runs([run(0, 10.0, 4.0), run(1, 14.0, 6.0), run(2, 99.0, 1.0, status="failed"),
                         DiffusionSummary("completed", "other", 0, ["seed=0", "distill.train_steps=5"], dataset={"name": "digits"})])
    assert [group.label for group in groups] == ["digits defaults", "digits distill.train_steps=5"]
    assert cells(groups[0], 2)[:4] == ["2", "12.00 ± 2.83", "5.00 ± 1.41", "-7.00 ± 1.41"]  # the failed run is left out
