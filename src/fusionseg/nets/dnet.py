"""Placeholder: filled by the dnet work."""
