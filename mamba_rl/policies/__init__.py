"""Mamba and GRU actor-critics."""
