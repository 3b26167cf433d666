"""Pure core of isic-assets: download, extract, harmonize, image ops, splits, plots.

Nothing in this package imports Dagster, so every stage can be imported, tested and reused from a
notebook or a training script without an orchestrator.
"""
