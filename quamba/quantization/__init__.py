"""Quantization: observers and calibration, recipes, GPTQ, rotation, and the quantized checkpoint format."""
from .api import quantize
from .recipes import RECIPES, Quamba1Config, Quamba2Config, make_recipe

__all__ = ["quantize", "RECIPES", "Quamba1Config", "Quamba2Config", "make_recipe"]
