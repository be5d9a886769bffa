"""Backbones with an exit point per layer/stage, and their weight loaders.

Text: BERT, RoBERTa, ALBERT (+ Hugging Face weights). Decoder LMs:
Llama/Mistral and Mamba-1/2 (+ Hugging Face weights; SmolLM2 from GGUF in
`jaxexit.models.gguf_weights`, which needs the `gguf` package), each a
`jaxexit.decoding.DecoderBackbone`. Vision: ViT,
StagedCNN / MultiExitCNN, Dynamic Perceiver, EfficientNet-Lite0 (+ its
PyTorch pickle, read without torch). Every encoder exposes `embed` → carry,
`exit_layers()` (its layers for `jaxexit.execution.exit_stack`), `pool` (HF
tanh pooler) and a parity `__call__`; exit methods attach their own heads.
"""

from jaxexit.models.albert import AlbertConfig, AlbertEncoder
from jaxexit.models.bert import (
  ACTIVATIONS,
  BertConfig,
  BertEncoder,
  TransformerLayer,
  mean_pool,
)
from jaxexit.models.cnn_stages import MultiExitCNN, StagedCNN, StagedCNNConfig
from jaxexit.models.dyn_perceiver import (
  DynPerceiver,
  DynPerceiverConfig,
  dyn_perceiver_loss,
)
from jaxexit.models.efficientnet_lite import (
  EfficientNetLite,
  EfficientNetLiteConfig,
  load_efficientnet_lite,
)
from jaxexit.models.clip_vision import ClipVision, ClipVisionConfig
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llama_attention import KVCache
from jaxexit.models.llama_weights import (
  LLAMA_CONFIGS,
  export_llama_state_dict,
  llama_from_pretrained,
  load_llama_state_dict,
)
from jaxexit.models.llava import LLAVA_CONFIGS, LlavaConfig, LlavaLM
from jaxexit.models.llava_weights import (
  export_llava_state_dict,
  llava_from_pretrained,
  load_llava_state_dict,
)
from jaxexit.models.mamba import MAMBA_CONFIGS, MambaConfig, MambaLM
from jaxexit.models.mamba2 import MAMBA2_CONFIGS, Mamba2Config, Mamba2LM
from jaxexit.models.mamba_weights import (
  load_mamba2_state_dict,
  load_mamba_state_dict,
  mamba_from_pretrained,
)
from jaxexit.models.ssm_lm import MambaCache
from jaxexit.models.hf_weights import (
  checkpoint_pooling,
  config_from_hf,
  export_hf_state_dict,
  from_pretrained,
  load_hf_weights,
  load_minilm,
  minilm_path,
  read_state_dict,
)
from jaxexit.models.torch_pickle import load_torch_state_dict
from jaxexit.models.vit import VIT_CONFIGS, ViT, ViTConfig

__all__ = [
  "ClipVision",
  "ClipVisionConfig",
  "LLAVA_CONFIGS",
  "LlavaConfig",
  "LlavaLM",
  "export_llava_state_dict",
  "llava_from_pretrained",
  "load_llava_state_dict",
  "LLAMA_CONFIGS",
  "MAMBA2_CONFIGS",
  "MAMBA_CONFIGS",
  "KVCache",
  "LlamaConfig",
  "LlamaLM",
  "Mamba2Config",
  "Mamba2LM",
  "MambaCache",
  "MambaConfig",
  "MambaLM",
  "export_llama_state_dict",
  "llama_from_pretrained",
  "load_llama_state_dict",
  "load_mamba2_state_dict",
  "load_mamba_state_dict",
  "mamba_from_pretrained",
  "ACTIVATIONS",
  "VIT_CONFIGS",
  "AlbertConfig",
  "AlbertEncoder",
  "BertConfig",
  "BertEncoder",
  "DynPerceiver",
  "DynPerceiverConfig",
  "EfficientNetLite",
  "EfficientNetLiteConfig",
  "MultiExitCNN",
  "StagedCNN",
  "StagedCNNConfig",
  "TransformerLayer",
  "ViT",
  "ViTConfig",
  "checkpoint_pooling",
  "config_from_hf",
  "dyn_perceiver_loss",
  "export_hf_state_dict",
  "from_pretrained",
  "load_efficientnet_lite",
  "load_hf_weights",
  "load_minilm",
  "load_torch_state_dict",
  "mean_pool",
  "minilm_path",
  "read_state_dict",
]
