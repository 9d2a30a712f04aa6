"""The networks (torch ``nn.Module``s, used by inference and training alike) and their numpy-side geometry.

``IMISSegmentLib.networks.click_net`` imports torch; import it only where torch is wanted (the torch
engine, training, export). ``IMISSegmentLib.networks.geometry`` is numpy only: the resize / pad that maps a
slice to the network resolution and back, shared by the engines and the training data pipeline.
"""
