"""FX graph passes on the joint forward+backward graph.

Each pass lives in a module of its own with a stated contract. Passes may import
``nvfp4_compile`` (recipe, ops) and are wired in by ``nvfp4_compile.backend``;
they never import the backend.
"""
