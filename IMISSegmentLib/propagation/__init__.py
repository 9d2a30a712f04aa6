"""Memory propagation (issue #4): ROI geometry, the memory manager, the sweep logic and the network's stages."""
