"""Placeholder: filled by the unet work."""
