import re

import pytest
import torch
from torch import nn

from kdsweep.config import schema
from kdsweep.errors import KdsweepError
from kdsweep.io import torch_save
from kdsweep.models import MODELS, build_model, load_model, save_model

MEAN = [0.49, 0.48, 0.45]
STD = [0.25, 0.24, 0.26]

# The CIFAR-stem networks of the study with 10 classes (the reference study's; torchvision's
# counts minus the 7x7 stem plus a 3x3 one).
PARAMS_10_CLASSES = {"resnet18": 11_173_962, "resnet50": 23_520_842, "mobilenet_v3_small": 1_528_106}


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return {name: build_model(name, 10, MEAN, STD) for name in MODELS}


def _stem(name, model):
    return model.net.features[0][0] if name.startswith("mobilenet") else model.net.conv1


def test_registry_is_the_study_architectures():
    assert set(MODELS) == set(PARAMS_10_CLASSES)


def test_config_schema_accepts_exactly_the_registered_models():
    assert set(schema()["$defs"]["model"]["enum"]) == set(MODELS)


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


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KdsweepError, match="mobilenet_v3_small.*resnet18.*resnet50"):
        build_model("vgg11", 10, MEAN, STD)


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


def test_mismatched_weights_are_refused(saved, tmp_path):
    path, model = saved
    wrong_classes = save_model(tmp_path / "a.pt", model, "mobilenet_v3_small", 10)
    with pytest.raises(KdsweepError, match="do not fit a mobilenet_v3_small with 10 classes"):
        load_model(wrong_classes)
    wrong_name = save_model(tmp_path / "b.pt", model, "resnet18", 4)
    with pytest.raises(KdsweepError, match="do not fit a resnet18"):
        load_model(wrong_name)


def test_unknown_saved_model_is_refused(saved, tmp_path):
    _, model = saved
    path = save_model(tmp_path / "c.pt", model, "vgg11", 4)
    with pytest.raises(KdsweepError, match="vgg11"):
        load_model(path)
