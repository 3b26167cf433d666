"""The thin Dagster layer: assets, checks, sensors and resources over the pure core."""
