"""loraflow: a folder of images + a trigger word + a base model -> a trained, published LoRA."""

__version__ = "0.1.0"
