"""fusionseg.runtime."""
