"""Backbones with an exit point per layer/stage, and their weight loaders.

Text: BERT, RoBERTa, ALBERT (+ Hugging Face weights). Vision: ViT,
StagedCNN / MultiExitCNN, Dynamic Perceiver, EfficientNet-Lite0 (+ its
PyTorch pickle, read without torch). Every encoder exposes `embed` → carry, `backbone()` → `(layer_fn, params, L)`
for the execution modes, `pool` (HF tanh pooler) and a parity `__call__`;
exit methods attach their own heads.
"""

from jaxexit.models.albert import AlbertConfig, AlbertEncoder
from jaxexit.models.bert import (ACTIVATIONS, BertConfig, BertEncoder,
                                 TransformerLayer, mean_pool)
from jaxexit.models.cnn_stages import MultiExitCNN, StagedCNN, StagedCNNConfig
from jaxexit.models.dyn_perceiver import (DynPerceiver, DynPerceiverConfig,
                                          dyn_perceiver_loss)
from jaxexit.models.efficientnet_lite import (EfficientNetLite,
                                              EfficientNetLiteConfig,
                                              load_efficientnet_lite0)
from jaxexit.models.hf_weights import (config_from_hf, export_hf_state_dict,
                                       from_pretrained, load_hf_weights,
                                       load_minilm, read_state_dict)
from jaxexit.models.torch_pickle import load_torch_state_dict
from jaxexit.models.vit import VIT_CONFIGS, ViT, ViTConfig

__all__ = [
    "ACTIVATIONS", "VIT_CONFIGS", "AlbertConfig", "AlbertEncoder",
    "BertConfig", "BertEncoder", "DynPerceiver", "DynPerceiverConfig",
    "EfficientNetLite", "EfficientNetLiteConfig", "MultiExitCNN",
    "StagedCNN", "StagedCNNConfig", "TransformerLayer", "ViT", "ViTConfig",
    "config_from_hf", "dyn_perceiver_loss", "export_hf_state_dict",
    "from_pretrained", "load_efficientnet_lite0", "load_hf_weights",
    "load_minilm", "load_torch_state_dict", "mean_pool", "read_state_dict",
]
