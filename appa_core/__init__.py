"""appa-core."""
