"""CE-CoLLM edge/cloud serving (Jin & Wu, arXiv 2411.02829; spec
`docs/papers/llm_exits.md` §4).

Submodules, imported explicitly (this file imports nothing heavy):

* model: `split` (the backbone split at layer k: edge blocks + exit head,
  exact cloud catch-up), `wire` (the hidden states' quantised wire
  format), `models` (the served models and their weight hash);
* cloud: `protocol` (framing and status mapping), `auth` (per-client
  tokens), `sessions` (the per-session context store), `cloud_exec`,
  `cloud_service`, `cloud` (the gRPC server; `python -m
  jaxexit.serve.cloud`);
* edge: `edge_link` (channel, deadlines, background uploads), `edge` (the
  client: standalone, collaborative and cloud-only modes, fall-back);
* network: `netshape` (a TCP proxy that emulates an edge link).
"""
