#!/usr/bin/env python3
"""Download one sdist from the package index, checking its sha256, without building it.

    python fetch_sdist.py pb1-detectron2 0.6 DEST_DIR   -> prints the downloaded path

``pip download`` cannot fetch pb1-detectron2: it prepares the package metadata first, which
imports torch in its setup.py and, with pip>=24, rejects the sdist's direct-URL extra. This
reads the index's PEP 691 JSON page instead (PIP_INDEX_URL, else pip's configured
index-url, else PyPI).
"""
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path


def index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                             capture_output=True, text=True)
        url = out.stdout.strip() if out.returncode == 0 else ""
    return (url or "https://pypi.org/simple").rstrip("/")


def fetch(name: str, version: str, dest: Path) -> Path:
    page = f"{index_url()}/{name}/"
    req = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    wanted = [f for f in files if f["filename"] in (f"{name}-{version}.tar.gz",
                                                   f"{name.replace('-', '_')}-{version}.tar.gz")]
    if not wanted:
        raise SystemExit(f"no sdist of {name}=={version} on {page}")
    info = wanted[0]
    with urllib.request.urlopen(info["url"], timeout=120) as resp:
        data = resp.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["hashes"]["sha256"]:
        raise SystemExit(f"sha256 mismatch for {info['filename']}: {digest}")
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / info["filename"]
    path.write_bytes(data)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(f"usage: {sys.argv[0]} NAME VERSION DEST_DIR")
    print(fetch(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
