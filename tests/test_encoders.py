"""Encoders: torchvision layer names, zero-initialised code head, weight loading, parameter groups."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mofa.decoder.layout import CodeLayout
from mofa.encoders import (ENCODERS, CodeHead, Encoder, build_encoder, convert_vgg_face_state_dict,
                           load_backbone_weights, register_encoder)
from mofa.encoders.vgg import VGGFaceEncoder
from mofa.errors import MofaError

LAYOUT = CodeLayout(n_shape=5, n_expression=4, n_reflectance=6)  # 5+4+6+3+3+27 = 48 entries

# Written out from torchvision.models.alexnet() (an independent reference, not derived from our code).
TORCHVISION_ALEXNET = [
    ("features.0.weight", (64, 3, 11, 11)), ("features.0.bias", (64,)),
    ("features.3.weight", (192, 64, 5, 5)), ("features.3.bias", (192,)),
    ("features.6.weight", (384, 192, 3, 3)), ("features.6.bias", (384,)),
    ("features.8.weight", (256, 384, 3, 3)), ("features.8.bias", (256,)),
    ("features.10.weight", (256, 256, 3, 3)), ("features.10.bias", (256,)),
    ("classifier.1.weight", (4096, 9216)), ("classifier.1.bias", (4096,)),
    ("classifier.4.weight", (4096, 4096)), ("classifier.4.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,)),
]

# Written out from torchvision.models.vgg16() (configuration D, no batch norm).
TORCHVISION_VGG16 = [
    ("features.0.weight", (64, 3, 3, 3)), ("features.0.bias", (64,)),
    ("features.2.weight", (64, 64, 3, 3)), ("features.2.bias", (64,)),
    ("features.5.weight", (128, 64, 3, 3)), ("features.5.bias", (128,)),
    ("features.7.weight", (128, 128, 3, 3)), ("features.7.bias", (128,)),
    ("features.10.weight", (256, 128, 3, 3)), ("features.10.bias", (256,)),
    ("features.12.weight", (256, 256, 3, 3)), ("features.12.bias", (256,)),
    ("features.14.weight", (256, 256, 3, 3)), ("features.14.bias", (256,)),
    ("features.17.weight", (512, 256, 3, 3)), ("features.17.bias", (512,)),
    ("features.19.weight", (512, 512, 3, 3)), ("features.19.bias", (512,)),
    ("features.21.weight", (512, 512, 3, 3)), ("features.21.bias", (512,)),
    ("features.24.weight", (512, 512, 3, 3)), ("features.24.bias", (512,)),
    ("features.26.weight", (512, 512, 3, 3)), ("features.26.bias", (512,)),
    ("features.28.weight", (512, 512, 3, 3)), ("features.28.bias", (512,)),
    ("classifier.0.weight", (4096, 25088)), ("classifier.0.bias", (4096,)),
    ("classifier.3.weight", (4096, 4096)), ("classifier.3.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,)),
]

# The VGG-Face PyTorch port's names, in the order of TORCHVISION_VGG16.
VGG_FACE_PORT_LAYERS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                        "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "fc8"]

HEAD_PARAMS = ["classifier.6.others.weight", "classifier.6.others.bias",
               "classifier.6.z_translation.weight", "classifier.6.z_translation.bias"]


def head_shapes(layout: CodeLayout) -> list[tuple[str, tuple[int, ...]]]:
    n = layout.size
    return list(zip(HEAD_PARAMS, [(n - 1, 4096), (n - 1,), (1, 4096), (1,)]))


@pytest.fixture(scope="module")
def alexnet() -> Encoder:
    return build_encoder("alexnet", LAYOUT, seed=0).eval()


@pytest.fixture(scope="module")
def vgg() -> Encoder:
    return build_encoder("vgg_face", LAYOUT, seed=0).eval()


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_alexnet_parameter_names_and_shapes_match_torchvision(alexnet):
    ours = [(name, tuple(p.shape)) for name, p in alexnet.named_parameters()]
    assert ours == TORCHVISION_ALEXNET[:-2] + head_shapes(LAYOUT)
    assert list(alexnet.state_dict()) == [name for name, _ in ours]  # normalisation buffers not saved


def test_vgg_parameter_names_and_shapes_match_torchvision(vgg):
    ours = [(name, tuple(p.shape)) for name, p in vgg.named_parameters()]
    assert ours == TORCHVISION_VGG16[:-2] + head_shapes(LAYOUT)


def test_zero_initialised_head_gives_exact_zero_code(alexnet, vgg):
    with torch.no_grad():
        code_a = alexnet(images(2, 64))
        code_v = vgg(images(2, 32))
    assert code_a.shape == code_v.shape == (2, LAYOUT.size)
    assert torch.equal(code_a, torch.zeros_like(code_a))
    assert torch.equal(code_v, torch.zeros_like(code_v))
    assert not alexnet.pretrained
    assert alexnet.init_description == "random init (seed 0), no pre-trained weights"


class TinyEncoder(Encoder):
    """A small conv encoder, to test the generic machinery quickly."""
    min_input_size = 8

    def __init__(self, layout, rotation_bound_rad=None):
        super().__init__(layout)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.head = CodeHead(4, layout, rotation_bound_rad)

    def embed(self, normalised):
        return self.conv(normalised).mean(dim=(2, 3))


@pytest.fixture
def tiny_registered():
    register_encoder("tiny_test")(TinyEncoder)
    yield "tiny_test"
    ENCODERS.pop("tiny_test", None)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone(tiny_registered):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_encoder(tiny_registered, LAYOUT, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_encoder(tiny_registered, LAYOUT, seed=1)
    c = build_encoder(tiny_registered, LAYOUT, seed=2)
    assert torch.equal(a.conv.weight, b.conv.weight)
    assert not torch.equal(a.conv.weight, c.conv.weight)
    assert c.init_description == "random init (seed 2), no pre-trained weights"


def test_head_interleaves_z_translation_in_code_order():
    head = CodeHead(4, LAYOUT)
    z = LAYOUT.slices["translation"].start + 2
    with torch.no_grad():
        head.others.bias.copy_(torch.arange(LAYOUT.size - 1, dtype=torch.float32))
        head.z_translation.bias.fill_(-1.0)
    code = head(torch.zeros(1, 4))[0]
    expected = torch.cat([torch.arange(z), torch.tensor([-1]), torch.arange(z, LAYOUT.size - 1)]).float()
    assert torch.equal(code, expected)
    assert LAYOUT.split(code[None]).translation[0, 2] == -1.0


def test_torchvision_checkpoint_loads_and_changes_backbone(tmp_path, alexnet):
    x = alexnet.normalise(images(1, 64))
    with torch.no_grad():
        features_before = alexnet.features(x)
    # Torchvision's keys and shapes (1000-class classifier.6 included). Convolutions random; the large
    # linear layers are expanded constants, which torch.save stores as one number: a small, fast file.
    generator = torch.Generator().manual_seed(7)
    state = {name: (0.01 * torch.randn(shape, generator=generator) if name.startswith("features.")
                    else torch.tensor(0.001 * (i + 1)).expand(shape))
             for i, (name, shape) in enumerate(TORCHVISION_ALEXNET)}
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)

    loaded = build_encoder("alexnet", LAYOUT, weights_path=path, seed=0).eval()
    assert loaded.pretrained and "alexnet-owt-7be5be79.pth" in loaded.init_description
    for name, value in loaded.state_dict().items():
        if not name.startswith("classifier.6."):
            assert torch.equal(value, state[name]), name
    with torch.no_grad():
        features_after = loaded.features(x)
        first_layer = loaded.features[:2](x)
        code = loaded(images(1, 64))
    assert not torch.allclose(features_before, features_after)
    expected = F.relu(F.conv2d(x, state["features.0.weight"], state["features.0.bias"], stride=4, padding=2))
    torch.testing.assert_close(first_layer, expected)
    assert torch.equal(code, torch.zeros_like(code))  # the head stays zero


def test_bad_checkpoints_give_mofa_error(tmp_path, alexnet):
    weights_before = alexnet.features[0].weight.clone()
    bad = {"missing": tmp_path / "nope.pth", "garbage": tmp_path / "garbage.pth",
           "code": tmp_path / "code.pth", "partial": tmp_path / "partial.pth",
           "extra": tmp_path / "extra.pth", "shape": tmp_path / "shape.pth"}
    bad["garbage"].write_bytes(b"not a checkpoint")
    torch.save({"state_dict": NotATensor(1)}, bad["code"])
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, bad["partial"])
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11), "fc_extra.weight": torch.zeros(2)},
               bad["extra"])
    torch.save({"state_dict": {"features.0.weight": torch.zeros(64, 3, 3, 3)}}, bad["shape"])
    expected_text = {"missing": "not found", "garbage": "not a readable", "code": "not a readable",
                     "partial": "missing keys: features.0.bias", "extra": "unexpected keys: fc_extra.weight",
                     "shape": "features.0.weight (64, 3, 3, 3) (expected (64, 3, 11, 11))"}
    for kind, path in bad.items():
        with pytest.raises(MofaError) as error:
            load_backbone_weights(alexnet, path)
        message = str(error.value)
        assert str(path) in message and expected_text[kind] in message, message
        assert "\n" not in message
    with pytest.raises(MofaError, match="nope.pth not found"):
        build_encoder("alexnet", LAYOUT, weights_path=bad["missing"])
    with pytest.raises(MofaError, match="unknown encoder 'resnet'"):
        build_encoder("resnet", LAYOUT)
    assert not alexnet.pretrained and torch.equal(alexnet.features[0].weight, weights_before)


@dataclasses.dataclass
class NotATensor:
    value: int


def test_parameter_groups_isolate_z_translation(alexnet):
    groups = alexnet.parameter_groups(lr=0.1, lr_z=0.0005, backbone_lr_scale=0.5)
    assert [g["name"] for g in groups] == ["backbone", "head", "z_translation"]
    assert [g["lr"] for g in groups] == [0.05, 0.1, 0.0005]
    z_group = groups[2]["params"]
    assert len(z_group) == 2
    assert {id(p) for p in z_group} == {id(p) for p in alexnet.classifier[6].z_translation.parameters()}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(alexnet.parameters()))
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in alexnet.classifier[6].others.parameters()}
    optimiser = torch.optim.Adadelta(groups)
    assert [g["lr"] for g in optimiser.param_groups] == [0.05, 0.1, 0.0005]


def test_z_translation_gradient_only_reaches_its_own_parameters():
    head = CodeHead(3, LAYOUT)
    z = LAYOUT.slices["translation"].start + 2
    head(torch.ones(2, 3))[:, z].sum().backward()
    assert head.z_translation.weight.grad.abs().sum() > 0
    assert head.others.weight.grad.abs().sum() == 0


def test_rotation_bound_keeps_rotation_inside_and_zero_at_init():
    bound = 0.5
    head = CodeHead(4, LAYOUT, rotation_bound_rad=bound)
    assert torch.equal(head(torch.randn(3, 4)), torch.zeros(3, LAYOUT.size))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.others.weight.copy_(0.2 * torch.randn(LAYOUT.size - 1, 4, generator=generator))
    x = torch.randn(16, 4, generator=generator)
    raw_rotation = (x @ head.others.weight.T)[:, LAYOUT.slices["rotation"]]  # rotation precedes z
    assert raw_rotation.abs().max() > 2 * bound  # the unbounded values do leave the range
    rotation = LAYOUT.split(head(x)).rotation
    assert 0.5 * bound < rotation.abs().max() < bound
    with torch.no_grad():  # far outside: float32 tanh saturates at exactly 1, never beyond the bound
        assert LAYOUT.split(head(1e4 * x)).rotation.abs().max() <= bound
    unbounded = CodeHead(4, LAYOUT)
    unbounded.load_state_dict(head.state_dict())
    small = 1e-4 * x
    torch.testing.assert_close(head(small), unbounded(small), rtol=1e-6, atol=0)  # identity near zero
    rot = LAYOUT.slices["rotation"]
    others = [i for i in range(LAYOUT.size) if not rot.start <= i < rot.stop]
    assert torch.equal(head(x)[:, others], unbounded(x)[:, others])  # only rotation is bounded
    with pytest.raises(MofaError, match="rotation_bound_rad"):
        CodeHead(4, LAYOUT, rotation_bound_rad=0.0)


def test_register_encoder_adds_a_buildable_encoder(tiny_registered):
    encoder = build_encoder(tiny_registered, LAYOUT, rotation_bound_rad=0.3, seed=3)
    assert isinstance(encoder, TinyEncoder) and ENCODERS[tiny_registered] is TinyEncoder
    assert torch.equal(encoder(images(2, 16)), torch.zeros(2, LAYOUT.size))
    assert encoder.code_head.rotation_bound_rad == 0.3
    assert len(encoder.parameter_groups(1.0, 0.01)[-1]["params"]) == 2
    with pytest.raises(MofaError, match="at least 8x8"):
        encoder(images(1, 4))
    with pytest.raises(ValueError, match="already registered"):
        register_encoder(tiny_registered)(type("Other", (TinyEncoder,), {}))


def test_normalisation_lives_in_the_encoder(alexnet, vgg):
    grey = torch.full((1, 3, 64, 64), 0.5)
    imagenet = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(alexnet.normalise(grey)[0, :, 0, 0], imagenet)
    vgg_face = 127.5 - torch.tensor([129.186279296875, 104.76238250732422, 93.59396362304688])
    torch.testing.assert_close(vgg.normalise(grey)[0, :, 0, 0], vgg_face)
    with pytest.raises(MofaError, match="at least 63x63"):
        alexnet(images(1, 62))


def test_convert_vgg_face_state_dict():
    # Port-named fake state dict; tensor i is filled with i, so each can be traced to its new name.
    port_names = [f"{layer}.{param}" for layer in VGG_FACE_PORT_LAYERS for param in ("weight", "bias")]
    fake = {name: torch.full((2,), float(i)) for i, name in enumerate(port_names)}
    fake["fc6.weight"] = torch.arange(2 * 3 * 7 * 7, dtype=torch.float32).reshape(2, 3, 7, 7)  # conv form
    fake["unrelated.weight"] = torch.zeros(1)
    converted = convert_vgg_face_state_dict(fake)
    torchvision_names = [name for name, _ in TORCHVISION_VGG16]
    assert list(converted) == torchvision_names + ["unrelated.weight"]  # unknown keys are left alone
    for i, (port, name) in enumerate(zip(port_names, torchvision_names)):
        if port != "fc6.weight":
            assert torch.equal(converted[name], torch.full((2,), float(i))), (port, name)
    assert torch.equal(converted["classifier.0.weight"], fake["fc6.weight"].reshape(2, 3 * 7 * 7))
    bgr = {"conv1_1.weight": torch.arange(3.0).view(1, 3, 1, 1)}
    flipped = convert_vgg_face_state_dict(bgr, flip_bgr=True)["features.0.weight"]
    assert flipped.flatten().tolist() == [2, 1, 0]
    # The VGG-Face encoder converts port-named files itself; torchvision-named ones pass through.
    assert list(VGGFaceEncoder.adapt_state_dict(fake)) == list(converted)
    assert VGGFaceEncoder.adapt_state_dict(converted) is converted


def test_kaiming_random_init_keeps_feature_scale_and_the_zero_head(alexnet):
    """He init: every backbone layer's weight std is sqrt(2 / fan_in) (within sampling error), biases 0,
    the head still zero (the zero code), and the fc7 features keep a scale near 1 where PyTorch's
    default init shrinks them by orders of magnitude."""
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    he = build_encoder("alexnet", LAYOUT, seed=0, random_init="kaiming").eval()
    assert torch.equal(torch.random.get_rng_state(), before)
    for name in ("features.0", "features.8", "classifier.4"):
        layer = he.get_submodule(name)
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05), name
        assert not layer.bias.any()
    x = images(4, 112)
    with torch.no_grad():
        assert not he(x).any()
        f_he = he.embed(he.normalise(x)).abs().mean().item()
        f_default = alexnet.embed(alexnet.normalise(x)).abs().mean().item()
    assert f_he > 0.1 and f_he > 20 * f_default
    assert "He/Kaiming" in he.init_description
    assert torch.equal(he.features[0].weight, build_encoder("alexnet", LAYOUT, seed=0, random_init="kaiming").features[0].weight)
    with pytest.raises(MofaError, match="random_init"):
        build_encoder("alexnet", LAYOUT, random_init="xavier")


@pytest.mark.parametrize("name", ["alexnet", "vgg_face"])
def test_dropout_option_sets_every_dropout_and_changes_nothing_else(name):
    """dropout=0: training-mode features are deterministic (the same as eval mode); the default (0.5,
    torchvision's) makes two training-mode passes differ; the weights do not depend on it."""
    plain = build_encoder(name, LAYOUT, seed=0, random_init="kaiming")
    off = build_encoder(name, LAYOUT, seed=0, random_init="kaiming", dropout=0.0)
    assert [m.p for m in off.modules() if isinstance(m, torch.nn.Dropout)] == [0.0, 0.0]
    assert [m.p for m in plain.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    for key, value in plain.state_dict().items():
        assert torch.equal(value, off.state_dict()[key]), key
    x = off.normalise(images(2, 64))
    with torch.no_grad():
        off.train(), plain.train()
        assert torch.equal(off.embed(x), off.embed(x))
        assert not torch.equal(plain.embed(x), plain.embed(x))
        train_features = off.embed(x)
        assert torch.allclose(train_features, off.eval().embed(x))
    assert "dropout 0" in off.init_description and "dropout" not in plain.init_description
    with pytest.raises(MofaError, match="dropout"):
        build_encoder(name, LAYOUT, dropout=1.0)
