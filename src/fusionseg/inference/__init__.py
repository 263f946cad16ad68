"""fusionseg.inference."""
