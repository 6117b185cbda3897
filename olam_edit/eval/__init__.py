"""Measuring edits: locality against the paper's baselines, the layer sweep, the benchmark, the
reference iterative fit, and the pictures they draw."""
