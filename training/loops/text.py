"""Train the 2D network's text stage (IMISSegmentLib.networks.click_net.TextConditioning) on named structures.

    python -m training.loops.text --config training/configs/text_net_cpu.json --out runs/text_net_cpu

The click network's weights come from a bundle (``init_bundle``, the shipped default) and stay frozen
(batch norm too): only the text stage learns, and since it starts at zero and "no text" is the zero
embedding, clicks and boxes without text give exactly the bundle's masks afterwards. Each step draws one
mode for the batch (``modes``: probabilities):

* ``text``: text alone, the target every structure of that category on the slice (``union``);
* ``text+click`` / ``text+box``: the first click (or a box, 5 px jitter) of training/loops/interaction.py with
  the text, then 0..``max_rounds`` correction clicks (no gradient), the target the one structure;
* ``localised+click``: as the engine answers a name and then clicks: the previous mask is the bundle's text
  localiser's answer to the name alone (training/loops/localised_prior.py; the bundle must have a localiser),
  then a first click (half the time the simulated user's correction of that answer, else a click of
  ``text+click``), then 0..``max_rounds`` correction clicks; the target the one structure. A name the localiser
  has no map for starts from an empty mask (``text+click``).

``init_text``: start the text stage from the bundle's own (a fine-tune) instead of from zero. The click
network sees its images as the engine shows them: to the power of the bundle's ``input_gamma`` (recorded in the
run's config); the localiser sees them as they are.

A ``modes`` given in the config (or ``--set modes=...``) replaces the default modes as a whole: the modes
it leaves out are not trained. The weights need not sum to 1 (they are normalised), but must be >= 0 with a
positive total.

Loss focal : dice = 20 : 1 (IMIS-Bench). The log also records, for the same prompts, the Dice without the
text (``dice_without``): the gain the text brings. Same run folder, checkpoint and resume behaviour as
training/loops/click_net.py; export with ``python -m training.export.text``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from IMISSegmentLib.engines.onnx_engine import bundle_input_gamma
from IMISSegmentLib.engines.torch_engine import network_from_bundle
from IMISSegmentLib.errors import InputError
from IMISSegmentLib.models import read_bundle_info
from IMISSegmentLib.networks.click_net import ClickNet
from IMISSegmentLib.text import Vocabulary

from IMISSegmentLib.evaluation.simulated_user import next_click
from training.loops.interaction import InteractionConfig, Prompts, add_correction_clicks, dice_scores, first_prompt, \
    interaction_loss, prompt_maps, shown_images
from training.data.datasets import MixedSource
from training.data.text_data import TEXT_KEYS, PhantomTextSource, TextSliceDataset, sided_categories
from training.loops.config_check import _show, check_config
from training.loops.click_net import DEFAULTS, check_input_size, load_config
from training.loops.localised_prior import LocalisedPrior
from training.loops.run import (due, _merge, _Pool, begin_run, close_run, finish_run, log_window, open_run, optimizer_step,
                                place_run, record_step, restore, run_training_cli, save_checkpoint)

TEXT_DEFAULTS = {
    "name": "text_net",
    "init_bundle": "Resources/models/default",
    "text": {"dim": 64, "film_from": 2},
    "data": {"roots": [], "axes": [0, 1, 2], "min_area": 16, "exclude_cases": [], "phantom_fraction": 0.2,
             "augment": True, "phantom_pool": 0, "sides": False},
    "init_text": False,
    "modes": {"text": 0.35, "text+click": 0.45, "text+box": 0.2},
    "interaction": {"max_rounds": 2, "center_click_prob": 0.5, "box_jitter_px": 5},
    "optimizer": {"lr": 2e-3, "weight_decay": 0.0, "warmup_steps": 50, "min_lr_ratio": 0.05, "grad_clip": 1.0},
    "steps": 2000,
    "batch_size": 8,
}
MODES = ("text", "text+click", "text+box", "localised+click")
# computed by the loop from its data and bundle (written to config.json and the checkpoint), not settings
DERIVED = ("trained_categories", "input_gamma")


def load_text_config(path) -> dict:
    """The config file over the defaults; a ``modes`` the file gives replaces the default modes."""
    defaults = _merge(DEFAULTS, TEXT_DEFAULTS)
    modes = defaults.pop("modes")
    config = load_config(path, defaults)
    config.setdefault("modes", modes)
    return config


def check_text_config(config: dict) -> dict:
    """check_config for the text loop, plus ``modes`` (known names, weights >= 0 with a positive total) and
    ``init_bundle`` (a bundle; ``input_size`` a multiple of its network's stride)."""
    def network(config: dict) -> None:
        if config.get("network"):
            raise InputError(f"config: network is not used by train_text (the network comes from init_bundle), "
                             f"got {_show(config['network'])}")
        modes = config.get("modes")
        if not isinstance(modes, dict) or not modes:
            raise InputError(f"config: modes must be a non-empty object of mode weights ({', '.join(MODES)}), "
                             f"got {_show(modes)}")
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            raise InputError(f"config: unknown modes {unknown} (known: {', '.join(MODES)})")
        for name, weight in modes.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
                raise InputError(f"config: modes.{name} must be a finite weight >= 0, got {_show(weight)}")
        if sum(modes.values()) <= 0:
            raise InputError(f"config: the modes' weights must have a positive total, got {_show(modes)}")
        if config.get("data", {}).get("zoom"):
            raise InputError(f"config: data.zoom is not used by the text loop, got {_show(config['data']['zoom'])}")
        check_sides_and_bundle(config, "the text stage trains on")
        if modes.get("localised+click", 0) > 0 and not ((read_bundle_info(config["init_bundle"]).get("text") or {})
                                                        .get("localiser")):
            raise InputError(f"config: mode localised+click needs a bundle with a text localiser; "
                             f"{config['init_bundle']} has none")
        if config.get("init_text"):
            check_init_text(config)
    return check_config(config, _merge(DEFAULTS, TEXT_DEFAULTS), network)


def check_sides_and_bundle(config: dict, role: str) -> None:
    """``data.sides`` (see text_data.sided_categories) and ``init_bundle``: a bundle whose network's stride divides
    ``input_size``; ``role`` ends the message of a missing bundle ("the text stage trains on")."""
    try:
        sided_categories(Vocabulary.default(), config.get("data", {}).get("sides", False))
    except ValueError as error:
        raise InputError(f"config: {error}") from None
    bundle = config.get("init_bundle")
    if not bundle:
        raise InputError(f"config: init_bundle must name the bundle whose click network {role}")
    info = read_bundle_info(bundle)
    try:
        check_input_size(config, ClickNet((info.get("network") or {}).get("config")))
    except (ValueError, TypeError, KeyError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{bundle}: its network config cannot be read ({error})") from None


def check_init_text(config: dict) -> None:
    """``init_text``: the bundle has a text stage of this run's shape (``text.dim``, ``text.film_from``, the
    vocabulary's categories); InputError naming what differs."""
    info = read_bundle_info(config["init_bundle"])
    stage = ((info.get("network") or {}).get("config") or {}).get("text") if info.get("text") else None
    if not stage:
        raise InputError(f"config: init_text needs a bundle with a text stage; {config['init_bundle']} has none")
    wanted = {**TEXT_DEFAULTS["text"], **(config.get("text") or {}), "categories": Vocabulary.default().size}
    differ = [f"{key} {stage.get(key)!r} (run: {wanted[key]!r})" for key in ("dim", "film_from", "categories")
              if stage.get(key) != wanted[key]]
    if differ:
        raise InputError(f"config: init_text: {config['init_bundle']}'s text stage differs from this run's in "
                         f"{', '.join(differ)}")


def text_network(config: dict, vocabulary: Vocabulary):
    """The bundle's ClickNet with a fresh text stage (``init_text``: the bundle's own); the click weights loaded
    and frozen."""
    bundle = Path(config["init_bundle"])
    # the bundle's own network, its weights checked and loaded strictly (InputError, a ValueError, if they do not fit)
    click = network_from_bundle(bundle, read_bundle_info(bundle))
    network = ClickNet({**click.config, "text": {"categories": vocabulary.size, "sides": 3, **config.get("text", {})}})
    # a bundle that already has a text stage gives its click weights only, unless init_text: then its text stage too
    state = click.state_dict()
    if not config.get("init_text"):
        state = {k: v for k, v in state.items() if not k.startswith("text.")}
    try:
        network.load_state_dict(state, strict=False)
    except RuntimeError as error:   # init_text: the bundle's text stage has another vocabulary or width
        raise InputError(f"config: init_text: {bundle}'s text stage does not fit this run's ({error})") from None
    freeze_click_weights(network)
    return network


def freeze_click_weights(network: ClickNet) -> None:
    """Only the text stage learns; batch norm keeps the bundle's statistics."""
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name.startswith("text."))
    network.batchnorm_frozen = True


def text_step(model, batch: dict, rng, config: dict, device="cpu", localiser=None, gamma: float = 1.0):
    """One simulated text interaction on ``batch`` (see the module docstring); (loss, stats). ``localiser``: a
    :class:`~training.loops.localised_prior.LocalisedPrior` (mode ``localised+click``); ``gamma``: the power the
    click network's images are raised to (the bundle's ``input_gamma``)."""
    modes = config["modes"]
    names = list(modes)
    mode = names[int(rng.choice(len(names), p=np.array([modes[n] for n in names]) / sum(modes.values())))]
    interaction = InteractionConfig.from_dict({**config.get("interaction", {}),
                                               "box_prob": 1.0 if mode == "text+box" else 0.0})
    key = "union" if mode == "text" else "label"
    raw = torch.from_numpy(batch["image"]).to(device)
    images = torch.from_numpy(shown_images(batch, gamma)).to(device) if gamma != 1.0 else raw
    target = torch.from_numpy(batch[key]).to(device)
    weight = torch.from_numpy(batch["valid"]).to(device)
    text = torch.from_numpy(batch["text"]).to(device)
    labels, valid = batch[key][:, 0] > 0.5, batch["valid"][:, 0] > 0.5
    size = images.shape[-1]
    previous = None
    if mode == "text":
        prompts, rounds = [Prompts([]) for _ in labels], 0
    elif mode == "localised+click":
        previous, localised = localiser.answers(raw, batch["text"])
        previous *= valid
        prompts = [localised_first_click(lab, ok, prior, found, rng, interaction)
                   for lab, ok, prior, found in zip(labels, valid, previous, localised)]
        rounds = int(rng.integers(0, interaction.max_rounds + 1))
    else:
        prompts = [first_prompt(lab, ok, rng, interaction) for lab, ok in zip(labels, valid)]
        rounds = int(rng.integers(0, interaction.max_rounds + 1))
    for _ in range(rounds):
        maps = torch.from_numpy(prompt_maps(prompts, previous, size, interaction.click_radius_px)).to(device)
        with torch.no_grad():
            probability = torch.sigmoid(model(images, maps, text))[:, 0].float().cpu().numpy()
        add_correction_clicks(prompts, probability > 0.5, labels, valid)
        previous = probability * valid
    maps = torch.from_numpy(prompt_maps(prompts, previous, size, interaction.click_radius_px)).to(device)
    logits = model(images, maps, text)
    loss, focal, dice = interaction_loss(logits, target, weight, interaction)
    with torch.no_grad():
        without = model(images, maps, torch.zeros_like(text))
        scores = dice_scores((logits[:, 0] > 0).cpu().numpy() & valid, labels)
        base = dice_scores((without[:, 0] > 0).cpu().numpy() & valid, labels)
    return loss, {"loss": float(loss.detach()), "focal": float(focal.detach()), "dice_loss": float(dice.detach()),
                  "dice": float(scores.mean()), "dice_without": float(base.mean()), "mode": mode, "rounds": rounds}


def localised_first_click(label, valid, prior, localised: bool, rng, interaction: InteractionConfig) -> Prompts:
    """The click after a name-alone answer ``prior``: half the time the simulated user's correction of it (a
    negative click on a stray part, a positive one on what it missed), else a positive click on the structure as
    ``text+click`` gives one (the evaluation's "text+click" clicks the structure's centre)."""
    if localised and rng.random() < 0.5:
        click = next_click((prior > 0.5) & valid, label)
        if click is not None:
            return Prompts([(int(click.point[0]), int(click.point[1]), bool(click.positive))])
    return first_prompt(label, valid, rng, interaction)


def build_text_sources(config: dict, vocabulary: Vocabulary):
    data, size = config["data"], int(config.get("input_size", 256))
    real = TextSliceDataset(data["roots"], vocabulary, data.get("axes", (0, 1, 2)), data.get("min_area", 16), size,
                            tuple(data.get("exclude_cases", ())), sides=data.get("sides", False)) \
        if data.get("roots") else None
    fraction = float(data.get("phantom_fraction", 0.2))
    phantoms = PhantomTextSource(vocabulary, size, data.get("min_area", 16)) if fraction > 0 or real is None else None
    if phantoms is not None and int(data.get("phantom_pool", 0)) > 0:   # phantoms are slow to draw: a fixed pool
        pool = _Pool(phantoms, int(data["phantom_pool"]), int(config["seed"]))
        phantoms = pool
    trained = dict(real.trained_categories()) if real else {}
    if phantoms is not None:
        trained = {**PhantomTextSource.categories(vocabulary), **trained}
    return MixedSource(real, phantoms, fraction, bool(data.get("augment", True)), TEXT_KEYS), trained


def train_text(config: dict, out_dir, resume: bool = True, progress: bool = True, stop_at: int | None = None) -> dict:
    out_dir = Path(out_dir)
    config = check_text_config({k: v for k, v in config.items() if k not in DERIVED})
    dist, log, checkpoint_path, saved, config = begin_run(config, out_dir, resume, derived=DERIVED)
    vocabulary = Vocabulary.default()
    if saved is not None:   # a run begun before later categories were appended keeps its embedding's categories
        vocabulary = vocabulary.limited(saved["model"]["text.category.weight"].shape[0])
    sources, trained = build_text_sources(config, vocabulary)
    config["trained_categories"] = {str(k): v for k, v in sorted(trained.items())}
    torch.manual_seed(int(config["seed"]))   # before the text stage is built: its initial weights follow the seed
    network = text_network(config, vocabulary)
    gamma = bundle_input_gamma(read_bundle_info(config["init_bundle"]))
    if saved is not None and float((saved.get("config") or {}).get("input_gamma", 1.0)) != gamma:
        raise InputError(f"{checkpoint_path}: the run began with input_gamma {saved['config'].get('input_gamma', 1.0)}, "
                         f"but {config['init_bundle']} now has {gamma}: resume it on the bundle it began with, "
                         f"or start over (--no-resume)")
    config["input_gamma"] = gamma
    localiser = LocalisedPrior(config["init_bundle"], dist.device) if config["modes"].get("localised+click", 0) > 0 \
        else None
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad],
                                  lr=float(config["optimizer"]["lr"]),
                                  weight_decay=float(config["optimizer"]["weight_decay"]))
    step, history = 0, []
    if saved is not None:
        step, history = restore(network, optimizer, saved, checkpoint_path)
    model = place_run(network, optimizer, config, out_dir, dist, log, step, saved is not None)
    if dist.main:
        log.info("text categories trained: " + ", ".join(
            f"{vocabulary.categories[c].name}{' (sided)' if s else ''}" for c, s in sorted(trained.items())))
    metrics, total, end, bar = open_run(config, out_dir, dist, progress, step, stop_at)
    model.train()
    started, window = time.perf_counter(), []
    try:
        while step < end:
            rng = np.random.default_rng([int(config["seed"]), dist.rank, step])
            batch = sources.batch(rng, int(config["batch_size"]))
            loss, stats = text_step(model, batch, rng, config, dist.device, localiser, gamma)
            optimizer_step(loss, optimizer, network, config, step)
            step += 1
            stats["step"], stats["lr"] = step, optimizer.param_groups[0]["lr"]
            record_step(stats, history, window, bar, history_keys=("step", "loss", "dice", "dice_without", "mode"))
            log_due, _, checkpoint_due = due(config, step, end)
            if dist.main and log_due:
                by_mode = {}
                for record in window:
                    by_mode.setdefault(record["mode"], []).append((record["dice"], record["dice_without"]))
                modes = " ".join(f"{m} {np.mean([a for a, _ in v]):.3f}/{np.mean([b for _, b in v]):.3f}"
                                 for m, v in sorted(by_mode.items()))
                started = log_window(log, metrics, window, ("loss", "focal", "dice_loss", "dice", "dice_without"),
                                     step, total, stats["lr"], started,
                                     lambda m: f"loss {m['loss']:.4f} dice {m['dice']:.3f} (without text "
                                     f"{m['dice_without']:.3f}; per mode with/without: {modes})")
            if dist.main and checkpoint_due:
                save_checkpoint(checkpoint_path, network, optimizer, step, config, history)
    finally:
        close_run(bar, metrics, dist)
    return finish_run(log, dist, step, history, None, checkpoint_path)


def main(argv=None) -> int:
    return run_training_cli("training.loops.text", __doc__.splitlines()[0], load_text_config, train_text, argv)


if __name__ == "__main__":
    sys.exit(main())
