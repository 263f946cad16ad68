"""fusionseg.deploy."""
