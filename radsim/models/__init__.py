"""PyTorch models whose routers emit routing traces: sequential Llama, radial, MoD, early exit.

Importing this package needs torch (the `torch` extra); the rest of radsim does not.
"""
