#!/usr/bin/env python3
"""Make the detectron2 v0.6 sources (PyPI sdist ``pb1-detectron2==0.6``) install pure-Python
on a current stack. Usage: ``python patch_detectron2_v06.py <unpacked sdist dir>``.

The sdist ships no C++ sources, and v0.6 predates Pillow 10, numpy 1.24, setuptools 81 and Python 3.11.
Each fix below checks that the text it replaces is there, so a different source tree fails
loudly instead of being half-patched. Running it twice is a no-op.
"""
import re
import shutil
import sys
from pathlib import Path

OPTIONAL_C = "try:\n    from detectron2 import _C\nexcept ImportError:  # installed without C++ ops\n    _C = None\n"


def _rewrite(path: Path, fix) -> None:
    text = path.read_text()
    new = fix(text)
    if new != text:
        path.write_text(new)


def no_extensions(root: Path) -> None:
    """1. No C++ extension; package the model-zoo configs from where setup.py looks."""

    def fix(text):
        if "ext_modules=[]," in text:
            return text
        if "ext_modules=get_extensions()," not in text:
            raise SystemExit("setup.py: 'ext_modules=get_extensions(),' not found")
        return text.replace("ext_modules=get_extensions(),", "ext_modules=[],")

    _rewrite(root / "setup.py", fix)
    if not (root / "configs").exists():
        shutil.copytree(root / "detectron2/model_zoo/configs", root / "configs")


def optional_c_import(root: Path) -> None:
    """2. ``from detectron2 import _C`` at module level must not fail without _C."""
    for rel in ("layers/deform_conv.py", "layers/rotated_boxes.py",
                "layers/roi_align_rotated.py", "evaluation/fast_eval_api.py"):
        def fix(text, rel=rel):
            if OPTIONAL_C in text:
                return text
            if "\nfrom detectron2 import _C\n" not in text:
                raise SystemExit(f"{rel}: module-level '_C' import not found")
            return text.replace("\nfrom detectron2 import _C\n", "\n" + OPTIONAL_C, 1)

        _rewrite(root / "detectron2" / rel, fix)


def pillow_linear(root: Path) -> None:
    """3. Pillow>=10 removed ``Image.LINEAR`` (an alias of BILINEAR)."""
    _rewrite(root / "detectron2/data/transforms/transform.py",
             lambda t: re.sub(r"Image\.LINEAR\b", "Image.BILINEAR", t))


def numpy_aliases(root: Path) -> None:
    """4. numpy>=1.24 removed ``np.bool/np.int/np.float/np.object``: use the builtins."""
    alias = re.compile(r"\bnp\.(bool|int|float|object)\b(?![_\d])")
    for path in (root / "detectron2").rglob("*.py"):
        _rewrite(path, lambda t: alias.sub(r"\1", t))


def no_pkg_resources(root: Path) -> None:
    """5. setuptools>=81 has no ``pkg_resources``: model_zoo uses importlib.resources."""

    def fix(text):
        if "pkg_resources" not in text:
            return text
        text = text.replace("import pkg_resources\n", "import importlib.resources as _resources\n")
        text = re.sub(
            r'pkg_resources\.resource_filename\(\s*"detectron2\.model_zoo",\s*'
            r'os\.path\.join\("configs", config_path\)\s*\)',
            'str(_resources.files("detectron2.model_zoo").joinpath("configs", config_path))',
            text,
        )
        if "pkg_resources" in text:
            raise SystemExit("model_zoo.py: unexpected pkg_resources use left")
        return text

    _rewrite(root / "detectron2/model_zoo/model_zoo.py", fix)


def fallback_sample(root: Path) -> None:
    """6. Python >= 3.11's ``random.sample`` refuses sets: ``MapDataset``'s retry after a mapper
    returns None (an unreadable training image) sampled from a set and crashed."""

    def fix(text):
        old = "cur_idx = self._rng.sample(self._fallback_candidates, k=1)[0]"
        if old not in text:
            if "sorted(self._fallback_candidates)" in text:
                return text
            raise SystemExit("data/common.py: MapDataset's fallback sample not found")
        return text.replace(old, "cur_idx = self._rng.sample(sorted(self._fallback_candidates), k=1)[0]")

    _rewrite(root / "detectron2/data/common.py", fix)


def main(argv) -> None:
    if len(argv) != 2 or not (Path(argv[1]) / "detectron2").is_dir():
        raise SystemExit(f"usage: {argv[0]} <unpacked detectron2 v0.6 source dir>")
    root = Path(argv[1])
    for step in (no_extensions, optional_c_import, pillow_linear, numpy_aliases, no_pkg_resources, fallback_sample):
        step(root)
    print(f"patched {root}")


if __name__ == "__main__":
    main(sys.argv)
