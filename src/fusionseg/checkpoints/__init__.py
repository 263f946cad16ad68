"""fusionseg.checkpoints."""
