"""Training hook of TTD: tag statistics, EMA teacher updates, LoRA-only checkpoints."""
import os

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..modeling.lora import lora_state_dict


def unwrap(model):
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def lora_checkpoint(model) -> dict:
    """The LoRA-only checkpoint of a TTD model: adapters, masker and, with an EMA teacher, its
    adapters (plain tensors)."""
    model = unwrap(model)
    checkpoint = {
        "lora": {k: v.detach().cpu() for k, v in lora_state_dict(model.backbone.clip).items()},
        "masker": {k: v.detach().cpu() for k, v in model.masker.state_dict().items()},
    }
    if model.ema_state:
        checkpoint["ema"] = {k: v.detach().cpu() for k, v in model.ema_state.items()}
    return checkpoint


class TTDHook(HookBase):
    """Added by the trainer when ``MODEL.TTD.ENABLED``.

    After every step: advances the EMA teacher, writes tag statistics (candidate and
    selected tags per caption, IoU of the distillation target with the caption mask, a
    histogram of tag scores) to the EventStorage. Every ``period`` steps and at the end:
    saves ``model_lora_<iter>.pth`` / ``model_lora_final.pth`` (a few MB) in ``output_dir``.
    """

    def __init__(self, output_dir: str, period: int, histogram_period: int = 20):
        self.output_dir = output_dir
        self.period = period
        self.histogram_period = histogram_period

    def after_step(self):
        model = unwrap(self.trainer.model)
        model.update_teacher()
        stats = model.tag_statistics
        if not stats:
            return
        storage = self.trainer.storage
        scalars = {f"ttd/{k}": float(v) for k, v in stats.items() if k not in ("scores", "valid")}
        storage.put_scalars(**scalars, smoothing_hint=True)
        scores = stats["scores"][stats["valid"]]
        if self.trainer.iter % self.histogram_period == 0 and scores.numel():
            storage.put_histogram("ttd/tag_scores", scores.cpu(), bins=20)
        next_iter = self.trainer.iter + 1  # named like detectron2's PeriodicCheckpointer does
        if self.period > 0 and next_iter % self.period == 0 and next_iter != self.trainer.max_iter:
            self._save(f"model_lora_{self.trainer.iter:07d}.pth")

    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._save("model_lora_final.pth")

    def _save(self, name: str):
        if comm.is_main_process():
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, name)
            tmp = path + ".tmp"
            torch.save(lora_checkpoint(self.trainer.model), tmp)
            os.replace(tmp, path)
