"""Cluster providers: one narrow interface (``base``), several implementations."""
