"""Reading a user's config file and command-line overrides into a ttd_d2 config, for the tools.

detectron2 and yacs report a user's config mistakes as assertion tracebacks (``AssertionError:
Non-existent key: MODEL.TTD.FOO``). The tools call these functions instead, so that a missing
file, a misspelt key, a value of the wrong type or an odd override list stops the command with
one line naming the file or key and where the valid keys are, before anything is built.
"""
import os
from typing import Sequence

import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.utils.file_io import PathManager

from .config import add_ttd_config

__all__ = ["load_config", "merge_config_file", "merge_config_opts"]

KEYS_HELP = ("ttd_d2's keys are in ttd_d2/config.py, one comment each; detectron2's in "
             "detectron2/config/defaults.py")


def merge_config_file(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)`` (its ``_BASE_`` chain included); ``SystemExit``
    naming the file and the fix when it or a file of its ``_BASE_`` chain is missing, it is not a
    YAML mapping, or it sets a key ``cfg`` lacks or a value of the wrong type."""
    if not config_file:
        raise SystemExit("no config file given: pass --config-file, e.g. configs/synthetic/ttd_maskclip.yaml "
                         "(README.md, 'Using it')")
    if not PathManager.isfile(config_file):  # what merge_from_file asserts (local files, registered URIs)
        raise SystemExit(f"config file '{config_file}' does not exist (working directory '{os.getcwd()}'): "
                         "give a path to a .yaml file, e.g. configs/synthetic/ttd_maskclip.yaml")
    try:
        cfg.merge_from_file(config_file)
    except yaml.YAMLError as e:
        raise SystemExit(f"config file '{config_file}' is not valid YAML: {e}") from None
    except (AttributeError, TypeError):  # yacs builds its tree from a mapping only
        raise SystemExit(f"config file '{config_file}' holds no mapping of config keys: write "
                         "nodes of KEY: value lines, e.g. 'MODEL: {TTD: {ENABLED: True}}'") from None
    except OSError as e:  # a _BASE_ file that is not there (relative paths: from the including file)
        raise SystemExit(f"config file '{config_file}': its _BASE_ chain names '{e.filename}', which does not "
                         "exist: fix the _BASE_ path (relative to the file that names it)") from None
    except (AssertionError, KeyError, ValueError) as e:
        # yacs: KeyError for a key not in cfg, ValueError for a type mismatch
        raise SystemExit(f"config file '{config_file}': {_message(e)} ({KEYS_HELP})") from None


def merge_config_opts(cfg: CfgNode, opts: Sequence) -> None:
    """``cfg.merge_from_list(opts)`` (KEY VALUE pairs); ``SystemExit`` naming the override and
    the fix for an odd list, a key ``cfg`` lacks or a value of the wrong type."""
    opts = list(opts)
    if len(opts) % 2:
        raise SystemExit(f"config overrides must be KEY VALUE pairs, got an odd list: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (AssertionError, KeyError, ValueError) as e:
        raise SystemExit(f"config override: {_message(e)} ({KEYS_HELP})") from None


def load_config(config_file: str, opts: Sequence = ()) -> CfgNode:
    """detectron2's defaults + ttd_d2's keys, then ``config_file``, then ``opts``; not frozen."""
    cfg = get_cfg()
    add_ttd_config(cfg)
    merge_config_file(cfg, config_file)
    merge_config_opts(cfg, opts)
    return cfg


def _message(error: Exception) -> str:
    return str(error.args[0]) if error.args else type(error).__name__
