"""Reference Triton kernels for chapter 02 (mirrors mili/kernels/)."""
