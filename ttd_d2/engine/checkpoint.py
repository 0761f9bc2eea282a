"""Detectron2's checkpointer, refusing LoRA files given as full checkpoints."""
from detectron2.checkpoint import DetectionCheckpointer

from ..modeling.lora.file import WEIGHTS_KEY, is_lora_file


class TTDCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that raises when ``MODEL.WEIGHTS`` (or any file it loads) is a
    LoRA file: loading one as a full checkpoint would load nothing but print key warnings."""

    def _load_file(self, filename):
        loaded = super()._load_file(filename)
        if is_lora_file(loaded.get("model", loaded)):
            raise ValueError(
                f"MODEL.WEIGHTS '{filename}' is a LoRA file (the adapters and masker of a TTD run), not a full "
                f"checkpoint: give it as {WEIGHTS_KEY} {filename} (MODEL.WEIGHTS takes a model_*.pth, or '')"
            )
        return loaded
