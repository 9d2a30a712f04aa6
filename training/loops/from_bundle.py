"""A bundle's 2D network as a run folder, for fine-tunes and averages that start from a shipped model.

    python -m training.loops.from_bundle --bundle Resources/models/default --out runs/click_net_070

A fine-tune (``init_from``) and its WiSE average (training/loops/average.py) read training checkpoints, and the
runs that made a bundle are not in a fresh clone: the bundle is. This writes ``checkpoint.pt`` with the bundle's
click weights (its text stage left out: the text loop trains that on top), the network config without the
text stage, batch norm frozen (as a bundle's statistics are fixed), and a ``config.json`` / ``train.log``
naming the bundle, its version and the run its network came from. No training step is taken.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from IMISSegmentLib.engines.torch_engine import network_from_bundle
from IMISSegmentLib.models import read_bundle_info
from IMISSegmentLib.networks.click_net import ClickNet

from training.export.bundle import run_command
from training.loops.record_run import checked_folder, write_folder
from training.loops.run import checkpoint_state


def bundle_run(bundle, out_dir) -> dict:
    """Write the run folder (see the module docstring); returns {"checkpoint": path}. A folder holding another
    kind of run is refused; the checkpoint is written last."""
    bundle, out_dir = Path(bundle), Path(out_dir)
    info = read_bundle_info(bundle)
    checked_folder(out_dir, "from_bundle", "a bundle's network")
    network = network_from_bundle(bundle, info)
    click = ClickNet({**network.config, "text": None})
    state = {k: v for k, v in network.state_dict().items() if not k.startswith("text.")}
    click.load_state_dict(state)
    training = info.get("training") or {}
    config = {"name": out_dir.name, "loop": "from_bundle", "bundle_name": info.get("name"),
              "bundle_version": info.get("version"), "source_bundle": str(bundle),
              "source_run": training.get("run_name"), "network": click.config,
              "input_size": int((info.get("input_size") or [256])[0]), "steps": 0}
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,000")
    log = [f"{stamp} the 2D network of bundle {info.get('name')} {info.get('version')} ({bundle}; run "
           f"{training.get('run_name')}), its text stage left out"]
    return write_folder(out_dir, config, log, checkpoint_state(click.state_dict(), click.config, 0, config, [], True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.loops.from_bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="the model bundle whose 2D network to take")
    parser.add_argument("--out", required=True, help="run folder to write (config.json, train.log, checkpoint.pt)")
    args = parser.parse_args(argv)
    return run_command("training.loops.from_bundle",
                       lambda: f"checkpoint {bundle_run(args.bundle, args.out)['checkpoint']}")


if __name__ == "__main__":
    sys.exit(main())
