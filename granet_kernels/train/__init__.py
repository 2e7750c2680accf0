"""The training driver (granet-train): CLI, data, models, loop, checkpoints. Not implemented yet (issue 6)."""
