"""Training loops, one per network (click_net, propagation, mrf, text), and what they share: the simulated
interaction, run-config checks, checkpoints and batch-norm handling."""
