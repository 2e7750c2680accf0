"""The GraNet engine: schedules, selection criteria, and the sparsifier (GraNet and the baselines
GMP, RigL, SET, static) on the sparse modules of granet_kernels.nn."""

from granet_kernels.pruning.config import METHODS, GraNetConfig
from granet_kernels.pruning.engine import GraNet
from granet_kernels.pruning.schedule import Schedule

__all__ = ["GraNet", "GraNetConfig", "Schedule", "METHODS"]
