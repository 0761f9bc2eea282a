"""The Detectron2 trainer of ttd_d2: caption data for training, evaluators by dataset type."""
import os
from unittest import mock

import torch

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import DatasetEvaluators
from detectron2.solver import build as solver_build
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..config_checks import check_trainable, check_training_config
from ..data.records import build_record_loader
from ..data.mappers import CaptionTrainMapper, TestMapper
from ..data.streams import SkipCountingLoader, SkipCountsHook
from ..data.streams.loader import build_stream_loader, uses_streams
from ..evaluation import SemSegRatesEvaluator, build_caption_evaluators
from .checkpoint import TTDCheckpointer
from .ddp import create_ddp_model
from .deferred_scalars import defer_loss_metrics, writer_period
from .delayed_start import DelayedStartLRMultiplier, delay_parameters
from .hooks import TTDHook, unwrap
from .tcl_hook import TCLCheckpointHook

# Scalars and embeddings that are not decayed (masker w, b; CLIP temperature; embeddings).
NO_WEIGHT_DECAY = ("w", "b", "logit_scale", "class_embedding", "positional_embedding")


def min_size_test(cfg, dataset_name: str) -> int:
    """The short side ``dataset_name`` is evaluated at: its entry of
    ``MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET``, else ``INPUT.MIN_SIZE_TEST``."""
    return dict((name, size) for name, size in cfg.MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET).get(
        dataset_name, cfg.INPUT.MIN_SIZE_TEST)


class TTDTrainer(DefaultTrainer):
    """DefaultTrainer with image-caption training data, the TTD hook, and evaluators chosen by
    each test dataset's ``evaluator_type`` (sem_seg | caption)."""

    def __init__(self, cfg):
        # Training-only keys, before detectron2 builds the model, optimizer and data loaders
        # (the model's keys are checked by build_model, which --eval-only also uses).
        check_training_config(cfg)
        # DefaultTrainer.__init__ builds the DDP wrapper and the checkpointer through two names
        # of detectron2.engine.defaults; ours are swapped in while it runs, rather than copying
        # its body: create_ddp_model gives a CPU model device_ids=None (detectron2 passes
        # [local_rank], which DDP rejects for CPU modules), TTDCheckpointer refuses LoRA files as
        # MODEL.WEIGHTS.
        with mock.patch.multiple(d2_defaults, create_ddp_model=create_ddp_model, DetectionCheckpointer=TTDCheckpointer):
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        """Shard sources streamed (:func:`~ttd_d2.data.streams.loader.build_stream_loader`),
        record datasets through detectron2's loader (:func:`~ttd_d2.data.records.build_record_loader`);
        both count their bad samples (:class:`SkipCountingLoader`)."""
        if uses_streams(cfg):
            return build_stream_loader(cfg, CaptionTrainMapper(cfg, True))
        return build_record_loader(cfg, CaptionTrainMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with :class:`TestMapper`, at the dataset's short side
        (``MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET``, else ``INPUT.MIN_SIZE_TEST``)."""
        size = min_size_test(cfg, dataset_name)
        if size != cfg.INPUT.MIN_SIZE_TEST:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.INPUT.MIN_SIZE_TEST = size
        return build_detection_test_loader(cfg, dataset_name, mapper=TestMapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "sem_seg":
            return DatasetEvaluators([SemSegRatesEvaluator(dataset_name, distributed=True, output_dir=output_folder)])
        if evaluator_type == "caption":
            return build_caption_evaluators(
                dataset_name, output_dir=output_folder, mask_threshold=cfg.MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD
            )
        raise NotImplementedError(
            f"no evaluator for dataset '{dataset_name}' (evaluator_type={evaluator_type!r}); "
            "ttd_d2 evaluates 'sem_seg' and 'caption' datasets"
        )

    def resume_or_load(self, resume=True):
        """detectron2's, then a streamed training loader continues from the restored iteration
        (``SkipCountingLoader.resume``) instead of the stream's start."""
        super().resume_or_load(resume=resume)
        if isinstance(self._trainer.data_loader, SkipCountingLoader):
            self._trainer.data_loader.resume(self.start_iter)

    def build_hooks(self):
        hook_list = super().build_hooks()
        # Hooks that put scalars go before detectron2's writer, which then writes them the same step.
        before_writer = []
        # SOLVER.DEFER_METRICS: per-step scalars read once per writer period (deferred_scalars)
        read_period = writer_period(hook_list) if self.cfg.SOLVER.DEFER_METRICS else 1
        if self.cfg.SOLVER.DEFER_METRICS:
            before_writer.append(defer_loss_metrics(self._trainer, read_period))
        if self.cfg.MODEL.TTD.ENABLED:
            before_writer.append(TTDHook(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.CHECKPOINT_PERIOD, write_period=read_period))
        if isinstance(self._trainer.data_loader, SkipCountingLoader):  # bad samples counted
            before_writer.append(SkipCountsHook(
                self._trainer.data_loader, self.cfg.DATASETS.IMAGE_TEXT.MAX_BAD_FRACTION, period=20))
        writer_at = next((i for i, h in enumerate(hook_list) if isinstance(h, hooks.PeriodicWriter)), len(hook_list))
        hook_list[writer_at:writer_at] = before_writer
        if unwrap(self.model).backbone.objective is not None:  # TCL's objective: the TCL in its own format
            hook_list.append(TCLCheckpointHook(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hook_list

    @classmethod
    def build_optimizer(cls, cfg, model):
        """AdamW (``SOLVER.OPTIMIZER: ADAMW``) or detectron2's SGD over trainable parameters;
        TCL's decoder-only warm-up puts its copied block in groups of their own (``delayed_start``)."""
        check_trainable(model)
        if cfg.SOLVER.OPTIMIZER.upper() == "SGD":
            optimizer = super().build_optimizer(cfg, model)
        elif cfg.SOLVER.OPTIMIZER.upper() == "ADAMW":
            params = get_default_optimizer_params(
                model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
                weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
                overrides={name: {"weight_decay": 0.0} for name in NO_WEIGHT_DECAY},
            )
            optimizer = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
                params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), weight_decay=cfg.SOLVER.WEIGHT_DECAY
            )
        else:
            raise ValueError(f"SOLVER.OPTIMIZER '{cfg.SOLVER.OPTIMIZER}' unknown; use ADAMW or SGD")
        if cfg.MODEL.TCL.DECODER_ONLY_ITERS > 0:
            delay_parameters(optimizer, model.backbone.decoder_only_frozen_parameters(), cfg.MODEL.TCL.DECODER_ONLY_ITERS)
        return optimizer

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """detectron2's schedule, in a multiplier that holds delayed groups at 0 until they
        start (``delayed_start``; the same as detectron2's when none is delayed)."""
        with mock.patch.object(solver_build, "LRMultiplier", DelayedStartLRMultiplier):
            return super().build_lr_scheduler(cfg, optimizer)
