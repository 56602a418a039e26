from .config import MambaConfig
from .init import build_random_model, init_weights, tiny_config
from .io import load_model, load_tokenizer, save_model
from .mamba import CausalLMOutput, InferenceCache, MambaLMHeadModel

__all__ = ["MambaConfig", "MambaLMHeadModel", "InferenceCache", "CausalLMOutput", "build_random_model",
           "init_weights", "tiny_config", "load_model", "load_tokenizer", "save_model"]
