"""Device kernels for the custom ops: Triton on CUDA (Hopper emulation of NVFP4)."""
