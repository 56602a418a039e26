"""quamba: post-training quantization for Mamba and Mamba2 language models."""
from .errors import QuambaError
from .models import MambaConfig, MambaLMHeadModel, build_random_model, load_model, load_tokenizer, save_model
from .quantization import quantize

__version__ = "0.1.0"
__all__ = ["QuambaError", "MambaConfig", "MambaLMHeadModel", "build_random_model", "load_model",
           "load_tokenizer", "save_model", "quantize", "__version__"]
