"""Attacks the paper does not run: inversion, linkage across keys, revocation."""
