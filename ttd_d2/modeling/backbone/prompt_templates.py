"""Named prompt-template sets (MODEL.CLIP.PROMPT_TEMPLATE_SET).

"imagenet80" is CLIP's 80 ImageNet templates, the set SCLIP, NACLIP and ClearCLIP average for
class names. It is read from open_clip (``zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``, the
same list as CLIP's notebook) rather than written here again: one copy of the list.
"""
from typing import List, Sequence

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

__all__ = ["TEMPLATE_SETS", "resolve_prompt_templates"]

TEMPLATE_SETS = {"imagenet80": tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)}


def resolve_prompt_templates(template_set: str, templates: Sequence[str]) -> List[str]:
    """The templates a model averages: the named set, or ``templates`` when ``template_set`` is ""."""
    if not template_set:
        return list(templates)
    if template_set not in TEMPLATE_SETS:
        raise ValueError(f"MODEL.CLIP.PROMPT_TEMPLATE_SET = {template_set!r} is unknown: use '' (MODEL.CLIP."
                         f"PROMPT_TEMPLATES) or one of {', '.join(TEMPLATE_SETS)}")
    return list(TEMPLATE_SETS[template_set])
