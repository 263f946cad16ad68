"""fusionseg.evaluation."""
