"""Rewrite an image so that its image ID depends only on its content: a pure library.

Docker's builders write wall-clock times, container ids and build-varying files (apt lists and
logs, ldconfig's aux-cache, bytecode of files written during the build ...) into layers and
config. This package turns an image's config and layer tars into a ``docker load``-able tar in
which every layer is canonical and the config is fixed, so that the same content gives the
same image ID on every engine. It knows tar, path rules, layers and image configs; it never
talks to an engine (builder/engine gets the layers and loads the result).

- ``tarformat``: the tar headers it writes, byte for byte, and seekable file views;
- ``paths``: what is dropped or emptied (the build-varying files live here once);
- ``layer``: one layer made canonical;
- ``image``: the config made canonical and the ``docker load`` tar;
- ``archive``: image archives as engines save them (classic or OCI layout, gzip layers).
"""
import hashlib
from pathlib import Path

from builder.normalize.archive import Archive, config_digest, normalize_saved_image, normalize_to_file, open_archive
from builder.normalize.image import (
    NormalizeReport, canonical_json, load_tar, drain, normalize_config, normalize_image, rfc3339, with_labels,
)
from builder.normalize.layer import LayerFile, LayerReport, normalize_layer, normalize_layer_bytes
from builder.normalize.paths import BUILD_VARYING, DEFAULT_DROP, DEFAULT_EMPTY, PYCACHE_DROP, PycacheMode
from builder.normalize.tarformat import BLOCK, CHUNK, EMPTY_LAYER_DIGEST, NormalizeError, SeekableReader, tar_header

__all__ = [
    "Archive", "BLOCK", "config_digest", "BUILD_VARYING", "CHUNK", "DEFAULT_DROP", "DEFAULT_EMPTY", "EMPTY_LAYER_DIGEST",
    "LayerFile", "LayerReport", "NormalizeError", "NormalizeReport", "PYCACHE_DROP", "PycacheMode",
    "SeekableReader", "canonical_json", "load_tar", "drain", "normalize_config", "normalize_image",
    "normalize_layer", "normalize_layer_bytes", "normalize_saved_image", "normalize_to_file", "open_archive",
    "rfc3339", "tar_header", "with_labels", "code_id",
]


def code_id(directory: Path = Path(__file__).parent) -> str:
    """A short hash of this package's source. What a builder remembers of earlier normalizations
    (raw layer → normalized layer, raw image → normalized image) holds only for the code that
    did them, so it is kept under this id: changed rules or config handling start afresh."""
    digest = hashlib.sha256()
    for source in sorted(directory.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
