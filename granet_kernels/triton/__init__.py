"""Triton kernels; each module imports triton itself so the package stays importable without it."""
