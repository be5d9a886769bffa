"""Dynamic Perceiver (ICCV 2023) on CIFAR-10.

python -m experiments.dynamic_perceiver --preset cpu
"""
