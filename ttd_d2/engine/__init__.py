from .hooks import TTDHook, lora_checkpoint
from .trainer import TTDTrainer
from .checkpoint import TTDCheckpointer
