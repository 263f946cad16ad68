"""fusionseg.training."""
