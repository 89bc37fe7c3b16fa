"""Runnable examples shipped with the package (``python -m store_rec.examples.<name>``)."""
