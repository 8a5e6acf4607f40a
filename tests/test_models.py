import re

import pytest
import torch
import torchvision
from torch import nn

from kdsweep.config import schema
from kdsweep.errors import KdsweepError
from kdsweep.io import torch_save
from kdsweep.models import (SMALL_IMAGE, build_model, check_buildable, check_name, family, load_model, names,
                            parameter_count, save_model)

MEAN = [0.49, 0.48, 0.45]
STD = [0.25, 0.24, 0.26]

# The CIFAR-stem networks of the study with 10 classes (the reference study's; torchvision's
# counts minus the 7x7 stem plus a 3x3 one).
PARAMS_10_CLASSES = {"resnet18": 11_173_962, "resnet50": 23_520_842, "mobilenet_v3_small": 1_528_106}


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return {name: build_model(name, 10, MEAN, STD) for name in PARAMS_10_CLASSES}


def _stem(name, model):
    return model.net.features[0][0] if name.startswith("mobilenet") else model.net.conv1


def _reference_study_network(name, num_classes, channels):
    """The reference study's network as it was hand-made before the registry: torchvision's, then a 3x3
    stride-1 kaiming-initialised stem (and, for a ResNet, no max-pool), drawn in this order."""
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    first = net.conv1 if name.startswith("resnet") else net.features[0][0]
    conv = nn.Conv2d(channels, first.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if name.startswith("resnet"):
        net.conv1, net.maxpool = conv, nn.Identity()
    else:
        net.features[0][0] = conv
    return net


@pytest.mark.parametrize("name", sorted(PARAMS_10_CLASSES))
@pytest.mark.parametrize("channels", [3, 1])
def test_the_reference_study_networks_are_drawn_exactly_as_before(name, channels):
    """config.yaml's study trains the very same models: the stem rule gives the hand-made stems' weights (same
    random draws, same shapes) and the same outputs for a seed."""
    torch.manual_seed(7)
    model = build_model(name, 10, MEAN[:channels], STD[:channels]).eval()
    torch.manual_seed(7)
    reference = _reference_study_network(name, 10, channels).eval()
    ours = {key.removeprefix("net."): value for key, value in model.state_dict().items() if key.startswith("net.")}
    theirs = reference.state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].shape == theirs[key].shape and torch.equal(ours[key], theirs[key]), key
    x = torch.rand(3, channels, 32, 32)
    mean, std = torch.tensor(MEAN[:channels]).view(1, -1, 1, 1), torch.tensor(STD[:channels]).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference((x - mean) / std), rtol=0, atol=0)


def test_registry_is_torchvisions_list_of_classification_models():
    listed = torchvision.models.list_models(module=torchvision.models)
    assert list(names()[: len(listed)]) == listed
    assert {"shufflenet_v2_x0_5", "efficientnet_b0", "convnext_tiny", "vit_b_16"} <= set(names())
    assert not any(name.startswith(("fasterrcnn", "deeplab", "r3d", "quantized")) for name in names())


def test_an_unknown_model_is_one_sentence_naming_the_fix():
    with pytest.raises(KdsweepError, match=r"'resnet19' is no torchvision classification model \(did you mean "
                                           r"resnet18.*`python -m kdsweep models` lists them"):
        check_name("resnet19")


def test_config_schema_takes_a_model_name_pattern_and_kdsweep_models_checks_it():
    pattern = schema()["$defs"]["model"]["pattern"]
    assert all(re.match(pattern, name) for name in names())
    assert re.match(pattern, "timm:resnet18.a1_in1k") and not re.match(pattern, "../evil")


@pytest.mark.skipif(__import__("importlib").util.find_spec("timm") is not None, reason="timm is installed")
def test_a_timm_model_without_timm_names_the_extra():
    with pytest.raises(KdsweepError, match=r"timm is not installed; install the optional extra"):
        check_name("timm:resnet18")


@pytest.mark.skipif(__import__("importlib").util.find_spec("timm") is None, reason="timm is not installed")
def test_a_timm_resnet_gets_the_small_image_stem():
    model = build_model("timm:resnet18", 10, MEAN, STD, image_size=32).eval()
    assert family("timm:resnet18") == "timm.ResNet"
    assert model.net.conv1.stride == (1, 1) and isinstance(model.net.maxpool, nn.Identity)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# family member -> where its stem convolution is, and its stem's max-pool (None: it has none)
SMALL_STEMS = {
    "shufflenet_v2_x0_5": ("conv1.0", "maxpool"),
    "efficientnet_b0": ("features.0.0", None),
    "mobilenet_v2": ("features.0.0", None),
    "mnasnet0_5": ("layers.0", None),
    "regnet_x_400mf": ("stem.0", None),
    "densenet121": ("features.conv0", "features.pool0"),
    "resnext50_32x4d": ("conv1", "maxpool"),
}


@pytest.mark.parametrize("name", sorted(SMALL_STEMS))
def test_small_images_get_the_familys_stride_1_stem(name):
    stem, pool = SMALL_STEMS[name]
    original = torchvision.models.get_model(name, weights=None, num_classes=10)
    assert original.get_submodule(stem).stride == (2, 2)  # ImageNet's stem halves the image
    torch.manual_seed(0)
    model = build_model(name, 10, MEAN, STD, image_size=32).eval()
    conv = model.net.get_submodule(stem)
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert conv.out_channels == original.get_submodule(stem).out_channels
    if pool:
        assert isinstance(model.net.get_submodule(pool), nn.Identity)
    for size in (8, 32):
        with torch.no_grad():
            assert model(torch.rand(2, 3, size, size)).shape == (2, 10)
    assert parameter_count(name) == sum(p.numel() for p in model.parameters())


def test_convnext_patchifies_by_a_sixteenth_of_the_side():
    torch.manual_seed(0)
    for size, patch in ((32, 2), (8, 1)):
        model = build_model("convnext_tiny", 10, MEAN, STD, image_size=size).eval()
        conv = model.net.features[0][0]
        assert conv.kernel_size == conv.stride == (patch, patch)
        with torch.no_grad():
            assert model(torch.rand(1, 3, size, size)).shape == (1, 10)


def test_a_vit_takes_patches_of_an_eighth_of_the_side():
    torch.manual_seed(0)
    model = build_model("vit_b_16", 10, MEAN, STD, image_size=32).eval()
    assert (model.net.image_size, model.net.patch_size) == (32, 4)
    assert model.net.encoder.pos_embedding.shape == (1, 1 + 8 * 8, 768)  # the class token and 64 patches
    assert len(model.net.encoder.layers) == 12  # vit_b_16's depth, as torchvision builds it
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", ["vgg11", "swin_t", "squeezenet1_0", "alexnet"])
def test_a_family_without_a_small_image_rule_is_refused_in_one_sentence(name):
    with pytest.raises(KdsweepError, match=rf"'{name}' is of the \w+ family, for which kdsweep has no small-image "
                                           r"stem rule.*32 px.*name a network of a family with one .*docs/models.md"):
        check_buildable(name, 32)
    assert check_buildable(name, SMALL_IMAGE + 1) == name  # large images: the network as torchvision builds it


@pytest.mark.parametrize("name", sorted(PARAMS_10_CLASSES))
def test_parameter_count(built, name):
    assert sum(p.numel() for p in built[name].parameters()) == PARAMS_10_CLASSES[name]


@pytest.mark.parametrize("name", sorted(PARAMS_10_CLASSES))
@pytest.mark.parametrize("size", [8, 32])
@pytest.mark.parametrize("training", [False, True])
def test_output_shape(built, name, size, training):
    model = built[name].train(training)
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PARAMS_10_CLASSES))
def test_cifar_stem(built, name):
    conv = _stem(name, built[name])
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert conv.bias is None and conv.in_channels == 3
    if name.startswith("resnet"):
        assert isinstance(built[name].net.maxpool, nn.Identity)
        assert not any(isinstance(m, nn.MaxPool2d) for m in built[name].modules())
    else:
        assert conv.out_channels == 16


def test_final_layer_has_num_classes_outputs():
    assert build_model("resnet18", 7, MEAN, STD).net.fc.out_features == 7
    assert build_model("mobilenet_v3_small", 7, MEAN, STD).net.classifier[-1].out_features == 7


def test_input_channels_follow_the_statistics():
    model = build_model("mobilenet_v3_small", 10, [0.3], [0.2]).eval()
    assert model.net.features[0][0].in_channels == 1
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_normalisation_is_the_first_layer(built):
    model = built["resnet18"].eval()
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std))
        assert not torch.allclose(model(x), model.net(x), atol=1e-4)


def test_statistics_are_buffers_not_parameters(built):
    model = built["mobilenet_v3_small"]
    state = model.state_dict()
    torch.testing.assert_close(state["normalize.mean"].flatten(), torch.tensor(MEAN))
    torch.testing.assert_close(state["normalize.std"].flatten(), torch.tensor(STD))
    assert not any(name.startswith("normalize") for name, _ in model.named_parameters())


def test_bn_momentum():
    def momenta(model):
        return {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}

    # torchvision's own default for MobileNetV3 is kept unless asked otherwise...
    assert momenta(build_model("mobilenet_v3_small", 10, MEAN, STD)) == {0.01}
    # ...and every BatchNorm layer gets the asked-for momentum.
    assert momenta(build_model("mobilenet_v3_small", 10, MEAN, STD, bn_momentum=0.1)) == {0.1}
    assert momenta(build_model("resnet18", 10, MEAN, STD, bn_momentum=0.3)) == {0.3}


def test_unknown_model_is_refused_by_build_model():
    with pytest.raises(KdsweepError, match="'resnet_18' is no torchvision classification model"):
        build_model("resnet_18", 10, MEAN, STD)


def test_a_new_family_and_a_checkpoints_stem_kernel_survive_save_and_load(tmp_path):
    torch.manual_seed(2)
    model = build_model("resnet18", 10, MEAN, STD, image_size=8, stem_kernel=7).eval()
    assert model.net.conv1.kernel_size == (7, 7) and model.net.conv1.stride == (1, 1)
    loaded = load_model(save_model(tmp_path / "a.pt", model, "resnet18", 10))
    assert loaded.net.conv1.kernel_size == (7, 7)
    torch.manual_seed(2)
    small = build_model("shufflenet_v2_x0_5", 10, MEAN, STD, image_size=8).eval()
    again = load_model(save_model(tmp_path / "b.pt", small, "shufflenet_v2_x0_5", 10))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(again(x), small(x), rtol=0, atol=0)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(1)
    model = build_model("mobilenet_v3_small", 4, MEAN, STD, bn_momentum=0.5)
    model.train()
    with torch.no_grad():  # give the BatchNorm running statistics non-default values
        model(torch.rand(4, 3, 8, 8))
    path = save_model(tmp_path / "model.pt", model, "mobilenet_v3_small", 4)
    return path, model.eval()


def test_save_load_round_trip(saved):
    path, model = saved
    loaded = load_model(path)
    assert not loaded.training
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.normalize.std.flatten(), torch.tensor(STD))
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(KdsweepError, match="does not exist"):
        load_model(tmp_path / "absent.pt")


def test_truncated_file_is_refused(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KdsweepError, match=re.escape(str(path)) + ".*delete it and rerun"):
        load_model(path)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(KdsweepError, match="cannot be read"):
        load_model(path)


def test_foreign_file_is_refused(tmp_path):
    path = torch_save({"weights": torch.zeros(3)}, tmp_path / "model.pt")
    with pytest.raises(KdsweepError, match="not a kdsweep model"):
        load_model(path)


@pytest.mark.parametrize("name, classes, message", [
    ("mobilenet_v3_small", 10, "do not fit a mobilenet_v3_small with 10 classes"),  # the wrong class count
    ("resnet18", 4, "do not fit a resnet18"),  # another architecture's name
    ("vgg11", 4, "vgg11"),  # a name no registry knows
])
def test_weights_saved_under_a_header_they_do_not_fit_are_refused(saved, tmp_path, name, classes, message):
    _, model = saved
    path = save_model(tmp_path / "model.pt", model, name, classes)
    with pytest.raises(KdsweepError, match=message):
        load_model(path)
