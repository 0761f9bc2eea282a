#!/usr/bin/env python
"""Train or evaluate a ttd_d2 model with Detectron2.

    python tools/train_net.py --config-file configs/synthetic/ttd_maskclip.yaml
    python tools/train_net.py --config-file configs/synthetic/maskclip.yaml --eval-only
    python tools/train_net.py --config-file configs/synthetic/clearclip.yaml --eval-only MODEL.TTD.LORA.WEIGHTS output/synthetic/ttd_clearclip/model_lora_final.pth
    python tools/train_net.py --config-file ... --num-gpus 8 SOLVER.IMS_PER_BATCH 512
"""
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import ttd_d2  # noqa: F401  (registers the backbone, meta-architecture and datasets)
from ttd_d2 import TTDTrainer, load_config
from ttd_d2.engine import TTDCheckpointer
from ttd_d2.engine.preflight import check_inputs
from ttd_d2.utils.cpu_memory import keep_freed_cpu_memory


def setup(args):
    cfg = load_config(args.config_file, args.opts)  # a missing file or misspelt key: one line naming it
    cfg.freeze()
    check_inputs(cfg, training=not args.eval_only)  # every missing weight file and dataset, before any output
    if cfg.MODEL.DEVICE == "cpu":
        keep_freed_cpu_memory()  # large CPU tensors reuse freed memory (ttd_d2/utils/cpu_memory.py: why)
    default_setup(cfg, args)
    # ttd_d2's own loggers (data, hooks) to the same console and log.txt, as detectron2 projects do
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ttd_d2")
    return cfg


def build_eval_model(cfg, resume=False):
    """The model of ``--eval-only``: built (a ``MODEL.TTD.LORA.WEIGHTS`` file is applied then),
    then ``MODEL.WEIGHTS`` (a full checkpoint, or the last one with ``resume``) loaded over it."""
    model = TTDTrainer.build_model(cfg)
    TTDCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    return model


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return TTDTrainer.test(cfg, build_eval_model(cfg, resume=args.resume))
    trainer = TTDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
