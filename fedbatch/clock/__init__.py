"""Virtual time (pure math, no Flower, no torch): devices, network, round scheduling."""
