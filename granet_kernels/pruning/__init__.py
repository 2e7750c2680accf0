"""The GraNet engine: pruning schedules, criteria and the sparsifier (GraNet, GMP, RigL, SET, static).

Not implemented yet (issue 5); the per-layer density distributions live in granet_kernels.nn.density.
"""
