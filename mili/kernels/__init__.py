"""Triton kernels (chapters 02 and 04), exported under the op names of `mili.backends`."""
