"""Training data: slices and slice sequences read from labelled volumes, synthetic phantoms, defective masks,
pseudo-masks, text samples and MRF round pairs (the sources and generators the training loops draw from)."""
