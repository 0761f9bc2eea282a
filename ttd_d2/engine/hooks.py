"""Training hook of TTD: tag statistics, EMA teacher updates, LoRA files."""
import os

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..modeling.lora import lora_state_dict
from ..modeling.lora.file import make_lora_file, save_lora_file
from ..modeling.meta_arch.ttd_lora import ttd_trained_parameters
from .deferred_scalars import DeferredScalars, writes_now


def unwrap(model):
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def lora_checkpoint(model) -> dict:
    """The LoRA file content of a TTD model (docs/LORA_FILES.md): its settings, adapters,
    masker, with an EMA teacher the EMA of the adapters' deltas, and the weights the backbone
    trains in full (TCL's decoder with MODEL.TCL.TRAIN_DECODER), as plain CPU tensors."""
    model = unwrap(model)
    if model.lora_settings is None:
        raise ValueError("the model has no LoRA adapters (MODEL.TTD.ENABLED False and no MODEL.TTD.LORA.WEIGHTS)")
    return make_lora_file(model.lora_settings, lora_state_dict(model.backbone.clip), model.masker.state_dict(),
                          model.ema_state, ttd_trained_parameters(model.backbone))


class TTDHook(HookBase):
    """Added by the trainer when ``MODEL.TTD.ENABLED``.

    After every step: advances the EMA teacher and keeps the step's tag statistics (candidate
    and selected tags per caption, IoU of the distillation target with the caption mask) on the
    device; they reach the EventStorage at their own iterations every ``write_period`` steps,
    read in one copy (:mod:`.deferred_scalars`: the step never waits for the GPU; 1 = every
    step), and every ``histogram_period`` steps a histogram of tag scores. Every ``period`` steps
    and at the end: saves the LoRA files ``model_lora_<iter>.pth`` / ``model_lora_final.pth`` in
    ``output_dir`` (a few MB; with an EMA teacher as large as the adapted weights, see
    docs/LORA_FILES.md). Placed before detectron2's writer, which writes the same step.
    """

    def __init__(self, output_dir: str, period: int, histogram_period: int = 20, write_period: int = 1):
        self.output_dir = output_dir
        self.period = period
        self.histogram_period = histogram_period
        self.write_period = write_period
        self._statistics = DeferredScalars()

    def _put(self, values, extras):
        self.trainer.storage.put_scalars(**{f"ttd/{k}": v for k, v in values.items()}, smoothing_hint=True)

    def after_step(self):
        model = unwrap(self.trainer.model)
        model.update_teacher()
        stats = model.tag_statistics
        if stats:
            self._statistics.add(self.trainer.iter, {k: v for k, v in stats.items() if k not in ("scores", "valid")})
            if self.trainer.iter % self.histogram_period == 0:
                scores = stats["scores"][stats["valid"]]  # boolean indexing reads the mask: only here
                if scores.numel():
                    self.trainer.storage.put_histogram("ttd/tag_scores", scores.cpu(), bins=20)
        if writes_now(self.trainer.iter, self.trainer.max_iter, self.write_period):
            self._statistics.flush(self._put)
        next_iter = self.trainer.iter + 1  # named like detectron2's PeriodicCheckpointer does
        if self.period > 0 and next_iter % self.period == 0 and next_iter != self.trainer.max_iter:
            self._save(f"model_lora_{self.trainer.iter:07d}.pth")

    def after_train(self):
        self._statistics.flush(self._put)
        # detectron2 calls after_train also when a step raised; trainer.iter reaches max_iter
        # only once the last step is done (TrainerBase.train), so a run that failed in its
        # last step writes no final file
        if self.trainer.iter >= self.trainer.max_iter:
            self._save("model_lora_final.pth")

    def _save(self, name: str):
        if comm.is_main_process():
            save_lora_file(lora_checkpoint(self.trainer.model), os.path.join(self.output_dir, name))
