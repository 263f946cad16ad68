"""Placeholder: filled by the ds_transunet work."""
