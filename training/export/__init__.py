"""Exports of trained checkpoints into model bundles: the click network (a new bundle), the stages added to a
bundle (correction, propagation, mrf, text) and the fusion settings; ``bundle`` holds what they share."""
