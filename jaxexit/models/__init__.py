"""Pretrained encoder backbones (BERT, RoBERTa, ALBERT) and HF weight loading.

Every encoder exposes `embed` → carry, `backbone()` → `(layer_fn, params, L)`
for the execution modes, `pool` (HF tanh pooler) and a parity `__call__`;
exit methods attach their own heads.
"""

from jaxexit.models.albert import AlbertConfig, AlbertEncoder
from jaxexit.models.bert import (ACTIVATIONS, BertConfig, BertEncoder,
                                 TransformerLayer, mean_pool)
from jaxexit.models.hf_weights import (config_from_hf, export_hf_state_dict,
                                       from_pretrained, load_hf_weights,
                                       load_minilm, read_state_dict)

__all__ = [
    "ACTIVATIONS", "AlbertConfig", "AlbertEncoder", "BertConfig",
    "BertEncoder", "TransformerLayer", "config_from_hf",
    "export_hf_state_dict", "from_pretrained",
    "load_hf_weights", "load_minilm", "mean_pool", "read_state_dict",
]
