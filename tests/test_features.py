"""The tap rule (kdsweep.features): which stage outputs of any network the feature-based methods read, the
probe pass that finds them, the hooks that keep them, and the refusal of a network with too few.

The expected stage outputs are those of torchvision's definitions: a ResNet's layer1 to layer4, a
MobileNet's block outputs where the resolution changes, EfficientNet's and ConvNeXt's stages. Networks
other than the study's three are built by torchvision.models.get_model, bare (no small-image stem), on
64 x 64 images: the rule reads only the network's structure, never kdsweep's model registry.
"""

import functools

import pytest
import torch
import torchvision
from torch import nn

from kdsweep.errors import KdsweepError
from kdsweep.features import find_stages, plan_taps, recorder
from kdsweep.methods import METHODS
from kdsweep.models import build_model


def found(model, image_shape):
    return [(stage.name, stage.shape) for stage in find_stages(model, image_shape)]


def test_the_study_models_stage_outputs_on_cifar_and_digits():
    """CIFAR ResNets: layer1 to layer4 (the stem's map is layer1's size: layer1's is the last of it);
    MobileNetV3-small: its stem, then the last block of each resolution (features.1, not the expansion layer
    inside the next block, which the rule passes over for the outermost), and the last convolution. On the
    8 x 8 digits they reach 1 x 1."""
    resnet = build_model("resnet18", 10, [0.5] * 3, [0.25] * 3)
    assert found(resnet, (3, 32, 32)) == [("net.layer1", (64, 32, 32)), ("net.layer2", (128, 16, 16)),
                                          ("net.layer3", (256, 8, 8)), ("net.layer4", (512, 4, 4))]
    assert [shape for _, shape in found(build_model("resnet50", 10, [0.5], [0.25]), (1, 8, 8))] == [
        (256, 8, 8), (512, 4, 4), (1024, 2, 2), (2048, 1, 1)]
    mobilenet = build_model("mobilenet_v3_small", 10, [0.5] * 3, [0.25] * 3)
    assert found(mobilenet, (3, 32, 32)) == [
        ("net.features.0", (16, 32, 32)), ("net.features.1", (16, 16, 16)), ("net.features.3", (24, 8, 8)),
        ("net.features.8", (48, 4, 4)), ("net.features", (576, 2, 2))]
    assert found(build_model("mobilenet_v3_small", 10, [0.5], [0.25]), (1, 8, 8)) == [
        ("net.features.0", (16, 8, 8)), ("net.features.1", (16, 4, 4)), ("net.features.3", (24, 2, 2)),
        ("net.features", (576, 1, 1))]


@pytest.mark.parametrize("name, expected", [
    # the ImageNet stem: its ReLU's map (32), then the stages (maxpool's 16 is layer1's size)
    ("resnet18", ["relu", "layer1", "layer2", "layer3", "layer4"]),
    ("efficientnet_b0", ["features.1", "features.2", "features.3", "features.5", "features"]),
    ("shufflenet_v2_x0_5", ["conv1", "maxpool", "stage2", "stage3", "conv5"]),
    ("regnet_x_400mf", ["stem", "trunk_output.block1", "trunk_output.block2", "trunk_output.block3", "trunk_output"]),
    ("convnext_tiny", ["features.1", "features.3", "features.5", "features"]),
])
def test_other_torchvision_architectures_tap_their_stages(name, expected):
    """Residual and inverted-residual blocks, squeeze-excitation branches, channel shuffles and ConvNeXt's
    channels-last block interiors: the interior of a block is never a stage output, the global pooling and
    the head are not either, and each map is half the size of the one before."""
    stages = find_stages(torchvision.models.get_model(name, num_classes=10), (3, 64, 64))
    assert [stage.name for stage in stages] == expected
    sizes = [stage.shape[1] for stage in stages]
    assert sizes == [sizes[0] // 2**i for i in range(len(sizes))] and sizes[-1] == 2


def test_a_map_larger_than_one_before_it_and_what_follows_the_global_pool_are_no_stages():
    """A VGG-like network whose adaptive pool enlarges 2 x 2 to 7 x 7 before its head (VGG's on small images),
    and one whose head normalises its pooled map (ConvNeXt's LayerNorm2d after the pool)."""
    vgg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(8 * 49, 10))
    assert found(vgg, (3, 4, 4)) == [("1", (4, 4, 4)), ("4", (8, 2, 2))]
    headed = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4),
                           nn.Flatten(), nn.Linear(4, 10))
    assert found(headed, (3, 8, 8)) == [("0", (4, 4, 4))]


def test_a_network_without_feature_maps_is_refused_in_one_sentence():
    """A vision transformer's only map is its patch embedding: attention transfer's three stages are refused
    with the count and the fix; so is a network with no 4-D map at all."""
    vit = torchvision.models.vision_transformer.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)
    assert found(vit, (3, 32, 32)) == [("conv_proj", (16, 4, 4))]
    resnet = find_stages(build_model("resnet18", 10, [0.5] * 3, [0.25] * 3), (3, 32, 32))
    hparams = {"beta": 1000.0, "p": 2.0, "stages": 3}
    with pytest.raises(KdsweepError) as refused:
        plan_taps(METHODS["at"], hparams, find_stages(vit, (3, 32, 32)), resnet, "vit", "resnet18", (3, 32, 32))
    assert str(refused.value) == (
        "at cannot tap the student vit on 32x32 images, which has 1 stage outputs (16x4x4): stages=3 needs 3; "
        "set methods.at.stages to at most 1; or distil it with a logit method")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(KdsweepError, match="the teacher mlp on 8x8 images, which has 0 stage outputs .none.: it has no "
                                           "4-D feature map"):
        plan_taps(METHODS["at"], hparams, resnet, find_stages(mlp, (3, 8, 8)), "resnet18", "mlp", (3, 8, 8))


def test_a_mismatched_pair_taps_each_networks_own_stages():
    """MobileNetV3-small from ResNet-50 on CIFAR: 5 and 4 stage outputs, other channels and sizes; each method
    takes its stages from each network's deepest, and the shapes its adapters are built for are theirs."""
    student = find_stages(build_model("mobilenet_v3_small", 10, [0.5] * 3, [0.25] * 3), (3, 32, 32))
    teacher = find_stages(build_model("resnet50", 10, [0.5] * 3, [0.25] * 3), (3, 32, 32))
    at = plan_taps(METHODS["at"], {"beta": 1000.0, "p": 2.0, "stages": 3}, student, teacher, "s", "t", (3, 32, 32))
    assert at.student == ("net.features.3", "net.features.8", "net.features")
    assert at.teacher == ("net.layer2", "net.layer3", "net.layer4")
    assert at.shapes.teacher == ((512, 16, 16), (1024, 8, 8), (2048, 4, 4))
    fitnets = plan_taps(METHODS["fitnets"], {"hint_weight": 100.0, "hint_stage": 2}, student, teacher, "s", "t",
                        (3, 32, 32))
    assert fitnets.shapes.student == ((48, 4, 4),) and fitnets.shapes.teacher == ((1024, 8, 8),)
    regressor = METHODS["fitnets"].make_state({"hint_weight": 100.0, "hint_stage": 2}, fitnets.shapes)
    assert regressor(torch.randn(2, 48, 4, 4)).shape == (2, 1024, 8, 8)  # ConvReg's transposed case


def test_the_probe_changes_nothing_and_the_hooks_change_no_result():
    """The probe draws nothing at random, leaves every weight, BatchNorm statistic and train/eval mode as
    it was; the hooks keep maps only while recording, and a forward pass with them gives the same logits,
    bit for bit, as one without."""
    model = build_model("mobilenet_v3_small", 10, [0.5], [0.25], bn_momentum=0.1)
    model.net.features[2].eval()  # a mixed mode, to be kept
    before = {key: value.clone() for key, value in model.state_dict().items()}
    modes = [module.training for module in model.modules()]
    rng = torch.get_rng_state()
    stages = find_stages(model, (1, 8, 8))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert [module.training for module in model.modules()] == modes
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model.eval()
    plain = model(images)
    taps = recorder(model)
    with taps.recording([stage.name for stage in stages]) as maps:
        recorded = model(images)
    assert torch.equal(plain, recorded) and list(maps) == [stage.name for stage in stages]
    assert [tuple(maps[stage.name].shape[1:]) for stage in stages] == [stage.shape for stage in stages]
    kept = dict(maps)
    model(images)  # outside recording: nothing kept
    assert recorder(model) is taps and len(taps.handles) == len(stages)
    assert taps.maps is maps and all(maps[name] is kept[name] for name in kept)



def test_a_logit_point_has_no_probe_and_no_hook_and_a_mismatched_pair_trains_through_the_adapters(request):
    """A logit method pays nothing for the feature methods: a kd point is built without a probe pass of either
    network and trains without a hook on either, even in a pack with feature points. Those (MobileNetV3-small
    from a ResNet-18: other channels at every stage, four stage outputs each on the 8 x 8 digits) hook exactly
    their tapped modules, the teacher's once for all of them, and train their adapters on their terms."""
    from kdsweep import features, sources, train
    from kdsweep.augment import Augment
    from kdsweep.plan import Run
    from kdsweep.runtime import Runtime

    def hooked(model):
        return sorted(name for name, module in model.named_modules() if module._forward_hooks)

    # one thread, as a job on one core (torch's all-core default crawls on a loaded machine), restored after
    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    rt = Runtime.from_config({"device": "cpu", "threads": 1, "precision": "fp32", "tf32": False,
                              "deterministic": True, "channels_last": False, "compile": False})
    training = {"lr": 1e-3, "weight_decay": 0.0, "bn_momentum": 0.1}
    teacher = build_model("resnet18", 10, [0.5], [0.25]).eval().requires_grad_(False)

    def point(method, hparams):
        return train.Point(Run.distilled_run(method, "mobilenet_v3_small", 0, method, hparams), training, 10, [0.5],
                           [0.25], rt, image_size=8, teacher=teacher)

    kd = point("kd", {"temperature": 4, "soft_weight": 0.9})
    assert kd.taps is None and teacher not in features._STAGES and kd.module not in features._STAGES
    images, labels = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), torch.arange(16) % 10
    augment = Augment(pad=1, flip_p=0.0, rotation_degrees=0)
    train.train_epoch([kd], teacher, sources.InMemory(augment, images, labels, 8), torch.Generator().manual_seed(0), rt)
    assert hooked(kd.module) == [] and hooked(teacher) == [] and teacher not in features._STAGES

    at = point("at", {"beta": 1000.0, "p": 2.0, "stages": 2})
    fitnets = point("fitnets", {"hint_weight": 100.0, "hint_stage": 2})
    reviewkd = point("reviewkd", {"review_weight": 5.0, "warmup_epochs": 1, "stages": 3})
    assert fitnets.taps.shapes.student == ((24, 2, 2),) and fitnets.taps.shapes.teacher == ((256, 2, 2),)
    assert reviewkd.taps.shapes.teacher == ((128, 4, 4), (256, 2, 2), (512, 1, 1))
    adapters = {p.method.name: [v.clone() for v in p.method_state.parameters()] for p in (fitnets, reviewkd)}
    losses = train.train_epoch([kd, at, fitnets, reviewkd], teacher, sources.InMemory(augment, images, labels, 8),
                               torch.Generator().manual_seed(0), rt)
    assert hooked(kd.module) == []
    for p in (at, fitnets, reviewkd):
        assert hooked(p.module) == sorted(p.taps.student)
    assert hooked(teacher) == ["net.layer2", "net.layer3", "net.layer4"]  # at's 3, 4; fitnets' 3; reviewkd's 2-4
    assert all(0 < losses[i][term] < float("inf") for i, term in ((1, "at"), (2, "hint"), (3, "review")))
    for p in (fitnets, reviewkd):
        assert all(not torch.equal(before, after)
                   for before, after in zip(adapters[p.method.name], p.method_state.parameters())), p.method.name


# ---------------------------------------------------------------- mismatched pairs (a hostile user's)

@pytest.mark.parametrize("student, teacher", [("mobilenet_v3_small", "resnet18"), ("resnet18", "mobilenet_v3_small")])
def test_a_pair_mismatched_in_count_channels_and_odd_sizes_trains_every_feature_method(request, student, teacher):
    """On 20 x 20 images (an imagefolder's crop) the maps are 20, 10, 5, 3 (and 2) pixels: five stage outputs
    against four, other channels everywhere, and sizes no factor of two apart. Each feature method pairs them
    from the deepest and trains a step with a finite term; fitnets' regressor meets both of ConvReg's odd
    cases (3 against 5: the teacher's map pooled; 5 against 3: a 3 x 3 kernel)."""
    from kdsweep import sources, train
    from kdsweep.augment import Augment
    from kdsweep.plan import Run
    from kdsweep.runtime import Runtime

    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    rt = Runtime.from_config({"device": "cpu", "threads": 1, "precision": "fp32", "tf32": False,
                              "deterministic": True, "channels_last": False, "compile": False})
    mean, std = [0.5] * 3, [0.25] * 3
    network = build_model(teacher, 10, mean, std, image_size=20).eval().requires_grad_(False)
    hparams = {"at": {"beta": 1000.0, "p": 2.0, "stages": 4}, "fitnets": {"hint_weight": 100.0, "hint_stage": 2},
               "reviewkd": {"review_weight": 5.0, "warmup_epochs": 1, "stages": 4}}
    points = [train.Point(Run.distilled_run(name, student, 0, name, params), {"lr": 1e-3, "weight_decay": 0.0,
                                                                               "bn_momentum": 0.1},
                          10, mean, std, rt, image_size=20, teacher=network) for name, params in hparams.items()]
    at, fitnets, reviewkd = points
    sizes = {"mobilenet_v3_small": [10, 5, 3, 2], "resnet18": [20, 10, 5, 3]}  # the last four of each
    assert [shape[1] for shape in at.taps.shapes.student] == sizes[student]
    assert [shape[1] for shape in at.taps.shapes.teacher] == sizes[teacher]
    s_map, t_map = fitnets.taps.shapes.student[0], fitnets.taps.shapes.teacher[0]
    assert {s_map[1], t_map[1]} == {3, 5}
    regressor = fitnets.method_state
    out = regressor(torch.randn(2, *s_map))
    assert out.shape == regressor.target(torch.randn(2, *t_map)).shape == (2, t_map[0], *[min(s_map[1], t_map[1])] * 2)
    images = torch.randint(0, 256, (4, 3, 20, 20), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    augment = Augment(pad=0, flip_p=0.0, rotation_degrees=0)
    losses = train.train_epoch(points, network, sources.InMemory(augment, images, torch.arange(4), 4),
                               torch.Generator().manual_seed(0), rt)
    assert all(0 < loss[term] < float("inf") for loss, term in zip(losses, ("at", "hint", "review"))), losses


def test_a_student_with_no_stage_output_is_refused_before_any_training_step():
    """A vision transformer has one map (its patch embedding) and a network of linear layers none: a feature point
    with either is refused when the point is built (before the optimiser, before any batch), in one sentence
    naming the hyperparameter or the way out."""
    from kdsweep import train
    from kdsweep.plan import Run
    from kdsweep.runtime import Runtime

    rt = Runtime.from_config({"device": "cpu", "threads": 1, "precision": "fp32", "tf32": False,
                              "deterministic": True, "channels_last": False, "compile": False})
    training = {"lr": 1e-3, "weight_decay": 0.0, "bn_momentum": 0.1}
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    mlp.architecture = "mlp"
    vit = torchvision.models.vision_transformer.VisionTransformer(
        image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)
    vit.architecture = "tiny_vit"
    for teacher, why in ((mlp, r"which has 0 stage outputs \(none\): it has no 4-D feature map"),
                         (vit, r"which has 1 stage outputs \(16x2x2\): stages=2 needs 2; set methods.at.stages to at "
                               r"most 1; or distil it with a logit method$")):
        with pytest.raises(KdsweepError, match=f"^at cannot tap the teacher {teacher.architecture} on 8x8 images, {why}"):
            train.Point(Run.distilled_run("at", "mobilenet_v3_small", 0, "at", {"beta": 1000.0, "p": 2.0, "stages": 2}),
                        training, 10, [0.5] * 3, [0.25] * 3, rt, image_size=8, teacher=teacher)
