"""CE-CoLLM: edge/cloud collaborative LLM inference (`python -m
experiments.ce_collm`; presets in configs.py)."""
