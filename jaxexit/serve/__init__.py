"""CE-CoLLM edge/cloud serving (Jin & Wu, arXiv 2411.02829; spec
`docs/papers/llm_exits.md` §4).

Submodules, imported explicitly (this file imports nothing heavy):
`split` (the model split at layer k: edge blocks + exit head, cloud
catch-up), `wire` (the hidden states' quantised wire format), `sessions`
(the cloud's per-session
context store), `netshape` (a TCP proxy that emulates an edge link).
"""
