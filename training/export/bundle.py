"""What every export into a model bundle shares: reading a checkpoint's network, the staging folder that
replaces a bundle whole (so a failure never leaves one half-written), the run records copied into it, and the
command line of the stage commands (``training.export.correction``, ``.mrf``, ``.propagation``, ``.text``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from IMISSegmentLib.models import BUNDLE_INFO, read_bundle_info
from IMISSegmentLib.networks.click_net import ClickNet
from IMISSegmentLib.settings import settings_json

from training.loops.checkpoints import read_checkpoint

OPSET = 17


def _checkpoint_runs() -> dict:
    """{network class: the training command whose checkpoints hold it}."""
    from IMISSegmentLib.networks.mrf_net import MrfNet
    from IMISSegmentLib.networks.prop_net import PropNet
    from IMISSegmentLib.networks.text_localiser import TextLocaliser
    return {ClickNet: "training.loops.click_net or training.loops.text", PropNet: "training.loops.propagation",
            MrfNet: "training.loops.mrf", TextLocaliser: "training.loops.text_localiser"}


def _build_network(network_class, state: dict):
    """(network, None) when ``state``'s weights load (strict) into ``network_class(network_config)``, else
    (None, the reason)."""
    try:
        network = network_class(state.get("network_config"))
        network.load_state_dict(state["model"], strict=True)
    except Exception as error:   # a config the class rejects, or weights that do not fit it
        return None, error
    return network, None


def load_checkpoint_network(checkpoint, network_class=ClickNet):
    """(network in eval mode, checkpoint dict) from a training checkpoint of any of the training loops
    (``network_class``: ClickNet, PropNet, MrfNet; built from the checkpoint's network config). ValueError
    naming the file when it cannot be read, is no checkpoint, or holds another network (naming that one)."""
    state = read_checkpoint(checkpoint)
    if "model" not in state:
        raise ValueError(f"{checkpoint}: not a training checkpoint (expected a dict with 'model')")
    network, error = _build_network(network_class, state)
    if network is None:
        runs = _checkpoint_runs()
        expected = f"a {network_class.__name__} (a {runs.get(network_class, 'training')} run)"
        for other, command in runs.items():
            if other is not network_class and _build_network(other, state)[0] is not None:
                raise ValueError(f"{checkpoint} holds a {other.__name__} (a {command} run); this command expects "
                                 f"{expected}") from None
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if isinstance(error, RuntimeError) and "state_dict" in reason:
            reason = "its weights do not fit the network its config describes"
        raise ValueError(f"{checkpoint}: cannot build {expected} from it ({reason[:300]})") from None
    return network.eval(), state


def network_entry(network) -> dict:
    """A bundle's record of a network: its class name, config and parameter count."""
    return {"class": type(network).__name__, "config": network.config,
            "parameters": int(sum(p.numel() for p in network.parameters()))}


def _check_onnx(path) -> None:
    """onnx's structural checker, when the onnx package is installed (the train extra has it)."""
    try:
        import onnx
    except ImportError:
        return
    onnx.checker.check_model(str(path), full_check=True)


_STAGING = re.compile(r"\.(staging|old)-(\d+)-[^/]*$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # another user's process: alive
        return True
    return True


def remove_stale_staging(target: Path) -> None:
    """Remove the staging (and finished-swap ``.old``) folders beside ``target`` left by exports that were
    killed (their process is gone); an ``.old`` folder stays while ``target`` is missing (the swap's only copy)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    prefix = f".{target.name}."
    for path in target.parent.iterdir():
        if not path.name.startswith(prefix) or path.is_symlink() or not path.is_dir():
            continue
        match = _STAGING.fullmatch(path.name[len(prefix) - 1:])
        if not match or _alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not target.exists():
            continue
        shutil.rmtree(path, ignore_errors=True)


def staging_folder(target: Path) -> Path:
    """A new hidden folder beside ``target`` to build its replacement in (stale ones of killed exports removed)."""
    target = Path(target)
    remove_stale_staging(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-", dir=target.parent))


def replace_folder(staging: Path, out_dir: Path) -> None:
    """Move a finished staging folder to ``out_dir``, replacing the bundle there (never half-written). Only an
    empty folder or a bundle (a folder with inference_info.json) is replaced: anything else is a ValueError."""
    staging.chmod(0o755)   # mkdtemp makes it private
    if out_dir.is_symlink() or out_dir.exists():
        if out_dir.is_symlink() or not out_dir.is_dir() or (any(out_dir.iterdir())
                                                             and not (out_dir / BUNDLE_INFO).is_file()):
            raise ValueError(f"{out_dir} is not a model bundle: not replaced")
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=out_dir.parent))
        old.rmdir()   # a unique name: rename needs it absent (or empty)
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)


@contextlib.contextmanager


def terminate_cleanly():
    """Within: SIGTERM exits through the ``finally`` blocks (so staging folders are removed), not at once."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:   # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(prog: str, action) -> int:
    """The end of an export command: ``action()`` (killed cleanly by SIGTERM) returns the line to print, exit 0;
    a bad input or a failed check (OSError, ValueError (InputError), RuntimeError) is one line on stderr, exit 2."""
    try:
        with terminate_cleanly():
            line = action()
    except (OSError, ValueError, RuntimeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(line)
    return 0


def rebuild_bundle(bundle, edit, runs=(), records=None) -> dict:
    """Rebuild an existing bundle in a staging folder: ``edit(staging, info)`` writes its files there and
    updates ``info`` in place; the run records of ``runs`` (the files named ``records``, default
    ``RUN_RECORDS``) are copied in, the info is written and checked (checksums), and the staging folder
    replaces the bundle. A failure leaves the old bundle untouched. Returns the new info."""
    bundle = Path(bundle)
    info = read_bundle_info(bundle)
    staging = staging_folder(bundle)
    try:
        shutil.copytree(bundle, staging, dirs_exist_ok=True)
        edit(staging, info)
        copied = copy_run_records(runs, staging / "training", records or RUN_RECORDS)
        if copied:
            info["training_records"] = sorted(set(info.get("training_records", [])) | set(copied))
        (staging / BUNDLE_INFO).write_text(json.dumps(info, indent=1) + "\n")
        read_bundle_info(staging)
        replace_folder(staging, bundle)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return info


RUN_RECORDS = ("config.json", "train.log", "metrics.jsonl")


def runs_named(entry) -> set:
    """Run names a bundle info entry records (``training.run_name``, or ``run`` of a settings entry such as
    ``inference_tuning``; nested anywhere in dicts and lists)."""
    names = set()
    if isinstance(entry, dict):
        for key, value in entry.items():
            if key in ("run_name", "run") and isinstance(value, str):
                names.add(value)
            names |= runs_named(value)
    elif isinstance(entry, list):
        for value in entry:
            names |= runs_named(value)
    return names


def recorded_parent(bundle, init_from):
    """The run folder name of ``init_from`` when it is another run's checkpoint (``runs/NAME/checkpoint.pt``) and
    ``bundle`` holds that run's records (``training/NAME/config.json``); else None."""
    if not isinstance(init_from, str) or Path(init_from).name != "checkpoint.pt":
        return None
    name = Path(init_from).parent.name
    return name if (Path(bundle) / "training" / name / "config.json").is_file() else None


def copy_run_records(runs, target: Path, names=RUN_RECORDS) -> list:
    """Copy each run folder's config, log and metrics (``names``) into ``target/<run folder name>/``; returns
    the relative paths written. A run folder without a config.json is an error (a wrong path, most likely)."""
    written = []
    for run in runs or ():
        run = Path(run)
        if not (run / "config.json").is_file():
            raise ValueError(f"{run}: not a training run folder (no config.json)")
        (target / run.name).mkdir(parents=True, exist_ok=True)
        for name in names:
            if (run / name).is_file():
                shutil.copyfile(run / name, target / run.name / name)
                written.append(f"training/{run.name}/{name}")
    return written


def run_record(checkpoint, state: dict, *config_keys) -> dict:
    """What a bundle records of the run behind one of its stages: the checkpoint's name and step, the run's
    name and data config (and ``config_keys`` of its config), the last training loss."""
    config = state.get("config") or {}
    history = state.get("history") or []
    record = {"checkpoint": Path(checkpoint).name, "step": state.get("step"), "run_name": config.get("name"),
              "data": config.get("data"), **{key: config.get(key) for key in config_keys}}
    record["final_train_loss"] = history[-1].get("loss") if history else None
    return record


def _failing_setting(settings_class, overrides: dict) -> str:
    """"<name> = <value>: " for the first setting that ``settings_class.from_dict`` rejects alone, else ""."""
    for name, value in overrides.items():
        try:
            settings_class.from_dict({name: value})
        except (TypeError, ValueError):
            return f"{name} = {json.dumps(value)}: "
    return ""


def stage_command(argv, prog: str, description: str, what: str, add, report, settings_class=None,
                  bundle_help: str = "existing bundle folder to add the stage to", present=None,
                  settings_help: str | None = None) -> int:
    """The command line of the commands that add a stage to an existing bundle (training.export.correction,
    .mrf, .propagation, .text): ``--checkpoint``, ``--bundle``, ``--runs``, and ``--settings`` (a JSON
    object of ``settings_class`` overrides, checked here by ``settings_class.from_dict``) when the stage has
    settings. ``add(args, overrides)`` adds the stage (``overrides``: the dict given, {} without --settings)
    and returns the bundle info; ``present(info)`` says whether the bundle had the stage before;
    ``report(args, info, verb)`` is the line printed (verb "added" or "replaced"); ``--bundle-version`` sets the
    bundle's version afterwards. Bad input: one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--checkpoint", required=True, help=f"{what} training checkpoint (checkpoint.pt)")
    parser.add_argument("--bundle", required=True, help=bundle_help)
    if settings_class is not None:
        parser.add_argument("--settings", default=None, metavar="JSON",
                            help=settings_help or f"JSON object of {settings_class.__name__} overrides")
    parser.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="run folders whose records to copy")
    parser.add_argument("--bundle-version", default=None, metavar="VERSION",
                        help="the bundle's new version (inference_info.json 'version'); default: unchanged")
    args = parser.parse_args(argv)
    try:
        with terminate_cleanly():
            if args.bundle_version is not None and not str(args.bundle_version).strip():
                raise ValueError("--bundle-version must not be empty")
            overrides = {}
            if settings_class is not None and args.settings:
                overrides = settings_json(args.settings, "--settings")
                try:
                    settings_class.from_dict(overrides)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"--settings {args.settings}: {_failing_setting(settings_class, overrides)}"
                                     f"{error}") from None
            replaced = False
            if present is not None:
                replaced = bool(present(read_bundle_info(args.bundle)))
            info = add(args, overrides)
            if args.bundle_version is not None:
                info = rebuild_bundle(args.bundle, lambda staging, new: new.update(version=args.bundle_version.strip()))
    except (OSError, ValueError, RuntimeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(report(args, info, "replaced" if replaced else "added"))
    return 0
