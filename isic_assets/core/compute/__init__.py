"""Where the per-image work of a step runs: the local fork pool or a Dask cluster (ISIC_COMPUTE)."""
