"""Paths on storage both sides of a remote stage can reach: local paths or fsspec URLs.

A stage delegated to a GPU worker exchanges only paths. When both machines see
the run directory (one machine, or a shared filesystem) the paths are passed
as they are. Otherwise ``workers.storage`` names an fsspec URL (``s3://``,
``gs://``, ``file://``...): the caller publishes the stage's inputs there, the
worker fetches them into local scratch space, runs the stage and publishes its
outputs back, and the caller fetches them into its run directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from seal_core.errors import InputError
from seal_core.io import fingerprint_file
from seal_core.pipeline import is_url


def _fs(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise InputError(f"cannot open {url}: {e}") from None


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def join(base: str, *parts: str) -> str:
    if is_url(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def exists(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.exists(p)
    return os.path.exists(path)


def fingerprint(path: str | os.PathLike) -> str:
    """Content fingerprint of a local file or directory; for a URL, the store's checksum or etag."""
    path = str(path)
    if is_url(path):
        fs, p = _fs(path)
        if not fs.exists(p):
            return f"missing:{path}"
        if "file" in _protocols(fs):
            return fingerprint_file(p)
        h = hashlib.blake2b(digest_size=16)
        for f in sorted(fs.find(p)) if fs.isdir(p) else [p]:
            info = fs.info(f)
            token = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("checksum")
            if token is None:
                token = fs.checksum(f) if hasattr(fs, "checksum") else (info.get("size"), info.get("mtime"))
            h.update(f"{f}\0{token}\0".encode())
        return h.hexdigest()
    if not os.path.exists(path):
        return f"missing:{path}"
    return fingerprint_file(path)


def publish(local: str | os.PathLike, dest: str) -> str:
    """Copy a local file or directory to ``dest`` (a URL or a local path); returns ``dest``."""
    local = Path(local)
    if not local.exists():
        raise InputError(f"cannot publish {local}: it does not exist")
    if not is_url(dest):
        if Path(dest).resolve() != local.resolve():
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            if local.is_dir():
                shutil.copytree(local, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(local, dest)
        return dest
    fs, p = _fs(dest)
    if local.is_dir():
        if fs.exists(p):
            fs.rm(p, recursive=True)
        fs.put(str(local), p, recursive=True)
    else:
        parent = p.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        fs.put_file(str(local), p)
    return dest


def fetch(src: str, local: str | os.PathLike) -> Path:
    """Copy ``src`` (a URL or local path) to the local path ``local``; returns it.

    A local ``src`` equal to ``local`` is left alone. The copy lands beside ``local`` first and is
    renamed into place, so an interrupted fetch never looks complete.
    """
    local = Path(local)
    if not is_url(src):
        if Path(src).resolve() == local.resolve():
            return local
        if not os.path.exists(src):
            raise InputError(f"not found: {src}")
        publish(src, str(local))
        return local
    fs, p = _fs(src)
    if not fs.exists(p):
        raise InputError(f"not found: {src}")
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.fetch")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if fs.isdir(p):
        fs.get(p.rstrip("/") + "/", str(tmp), recursive=True)
    else:
        fs.get_file(p, str(tmp))
    if local.exists():
        shutil.rmtree(local) if local.is_dir() else local.unlink()
    os.replace(tmp, local)
    return local
