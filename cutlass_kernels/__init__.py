"""CuTe-DSL kernels (nvidia-cutlass-dsl): the sm_100a block-scaled NVFP4 GEMM and others.

One kernel a module, a class per kernel with a small host wrapper beside it.
Kernels import neither ``nvfp4_compile`` nor ``passes``.
"""
