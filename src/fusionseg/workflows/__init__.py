"""fusionseg.workflows."""
