"""Load manifests/images.yaml, validate it, and expand it into the variants the builder makes.

Validation happens here, before anything is rendered or built, so a typo costs a second and a
clear message rather than a half-built image.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from packaging.version import InvalidVersion, Version

from builder.errors import UserError

# How the base is bootstrapped; changing the bootstrap's form (builder/base.py) changes this, so
# a base made the old way is not taken for one made the new way.
BOOTSTRAP_FORM = "local-repository-of-locked-debs/1"

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "images.yaml"
SCHEMA = ROOT / "manifests" / "images.schema.json"

# Keys (dotted, "*" for any name) whose values must parse as versions (packaging.version).
VERSION_KEYS = ("os.version", "python", "cuda.*.cuda", "cuda.*.torch", "cuda.*.torchvision",
                "cuda.*.torchaudio", "cuda.*.cudnn", "cuda.*.nccl", "cuda.*.triton", "cuda.*.nvcc",
                "cuda.*.cccl", "python_packages.*", "flavors.*.python_packages.*")


@dataclass(frozen=True)
class Cuda:
    """One CUDA build of torch and the library versions that build pins."""

    key: str  # "cu128"
    cuda: str
    index: str
    torch: str
    torchvision: str  # released together with torch: the pair must match it
    torchaudio: str
    cudnn: str
    nccl: str
    triton: str
    nvcc: str
    cccl: str

    @property
    def on_pypi(self) -> bool:
        return "pypi.org" in self.index


@dataclass(frozen=True)
class Manifest:
    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def source_date_epoch(self) -> int:
        return self.data["source_date_epoch"]

    @property
    def os(self) -> dict[str, Any]:
        return self.data["os"]

    @property
    def python(self) -> str:
        return self.data["python"]

    @property
    def user(self) -> dict[str, Any]:
        return self.data["user"]

    @property
    def venv_layers(self) -> dict[str, list[str]]:
        """Group name → the package-name patterns of runtime's venv layer it makes."""
        return {group["name"]: group["packages"] for group in self.data["venv_layers"]}

    @property
    def cudas(self) -> dict[str, Cuda]:
        return {key: Cuda(key=key, **value) for key, value in self.data["cuda"].items()}

    @property
    def default_cuda(self) -> str:
        return self.data["cuda_default"]

    @property
    def base_ref(self) -> str:
        """The base image reference: a registry digest, or a tag named after the bootstrap inputs.

        Hashing every input into the tag lets the builder reuse a bootstrapped base exactly
        when it would bootstrap the same bytes again.
        """
        if "image" in self.os:
            return self.os["image"]
        inputs = {"os": self.os, "user": self.user, "source_date_epoch": self.source_date_epoch,
                  "apt_lock_os": self._apt_os_pins(), "bootstrap": BOOTSTRAP_FORM}
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.name}-base:{self.os['name']}{self.os['version']}-{digest}"

    @property
    def apt_lock_path(self) -> Path:
        """The Ubuntu packages of every stage, pinned (builder/aptlock.py)."""
        return self.path.parent / "locks" / f"apt-{self.os['name']}{self.os['version']}.txt"

    def _apt_os_pins(self) -> list[str]:
        from builder import aptlock  # aptlock reads manifests; imported here to keep the module graph one-way
        return [pin.line() for _, pin in sorted(aptlock.read(self.apt_lock_path).sections.get("os", {}).items())]

    def variant_name(self, flavor: str, cuda_key: str) -> str:
        """The default CUDA build gets the bare flavor name, the others a suffix (runtime-cu126)."""
        return flavor if cuda_key == self.default_cuda else f"{flavor}-{cuda_key}"

    def variants(self) -> dict[str, Variant]:
        """Every flavor × CUDA build."""
        result = {}
        for cuda in self.cudas.values():
            for flavor in self.data["flavors"]:
                name = self.variant_name(flavor, cuda.key)
                result[name] = Variant(name=name, flavor=flavor, cuda=cuda, manifest=self)
        return result

    def variant(self, name: str) -> Variant:
        variants = self.variants()
        if name not in variants:
            raise UserError(f"unknown variant {name!r}; known variants: {', '.join(variants)} "
                            f"(declared in {self.path}); `build.py list` shows them")
        return variants[name]


@dataclass(frozen=True)
class Variant:
    """One image the builder can make: a flavor on one CUDA build."""

    name: str
    flavor: str
    cuda: Cuda
    manifest: Manifest

    def sibling(self, flavor: str) -> Variant:
        """The variant of another flavor on the same CUDA build."""
        return Variant(name=self.manifest.variant_name(flavor, self.cuda.key), flavor=flavor, cuda=self.cuda, manifest=self.manifest)

    def spec(self, flavor: str | None = None) -> dict[str, Any]:
        return self.manifest.data["flavors"][flavor or self.flavor]

    @property
    def built(self) -> bool:
        return self.spec()["built"]

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(self.spec()["ports"])

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(self.spec().get("services", []))

    def lineage(self) -> list[str]:
        """The flavor stages from runtime up to this flavor, each built FROM the one before."""
        chain = [self.flavor]
        while chain[0] != "runtime":
            chain.insert(0, self.spec(chain[0]).get("from", "runtime"))
        return chain

    def parts(self, flavor: str) -> list[str]:
        """The flavors whose additions the stage of `flavor` applies: its own, then its includes."""
        spec = self.spec(flavor)
        own = [flavor] if spec.get("python_packages") or spec.get("apt_packages") else []
        return own + list(spec.get("includes", []))

    def contents(self) -> list[str]:
        """Every flavor whose additions end up in this image, in the order they are applied."""
        return [part for stage in self.lineage() for part in (["runtime"] if stage == "runtime" else self.parts(stage))]

    def python_layers(self) -> list[str]:
        """runtime's venv, then each flavor in the image that adds Python packages."""
        return [f for f in self.contents() if f == "runtime" or self.spec(f).get("python_packages")]

    def lock_path(self, layer: str = "runtime") -> Path:
        """Locks live beside the manifest they were resolved from: locks/<layer>-<cuda>.txt."""
        return self.manifest.path.parent / "locks" / f"{layer}-{self.cuda.key}.txt"

    def requirements(self, layer: str = "runtime") -> list[str]:
        """Top-level pins a layer's lock is resolved from."""
        if layer == "runtime":
            pins = {"torch": self.cuda.torch, "torchvision": self.cuda.torchvision,
                    "torchaudio": self.cuda.torchaudio, **self.manifest.data["python_packages"]}
        else:
            pins = dict(self.spec(layer)["python_packages"])
            if layer == "devel":  # nvcc and headers follow the CUDA build
                pins |= {"nvidia-cuda-nvcc-cu12": self.cuda.nvcc, "nvidia-cuda-cccl-cu12": self.cuda.cccl}
        return [f"{name}=={version}" for name, version in sorted(pins.items())]


def load(path: Path = MANIFEST) -> Manifest:
    """Read and validate a manifest; every problem becomes a UserError naming file and key."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the manifest ({exc.strerror}); "
                        f"pass an existing file with --manifest") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    check_schema(path, data)
    check_versions(path, data)
    check_references(path, data)
    return Manifest(path=path, data=data)


def check_schema(path: Path, data: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise UserError("\n".join(describe_schema_error(path, e) for e in errors))


def describe_schema_error(path: Path, error: jsonschema.ValidationError) -> str:
    """Say which key is wrong, what was expected and what to do, in the manifest's own terms."""
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    where = f"{path}: key {key}"
    validator, expected = error.validator, error.validator_value
    if validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(known))
        hint = f"; allowed keys here: {', '.join(known)}" if known else ""
        return f"{where}: unknown key(s) {', '.join(unexpected)}{hint}"
    if validator == "required":
        return f"{where}: {error.message}; add it (see manifests/images.yaml for an example)"
    if validator == "type":
        got = type(error.instance).__name__
        hint = " (quote version numbers in YAML, e.g. \"12.8\")" if expected == "string" and got in ("float", "int") else ""
        return f"{where}: expected {expected}, got {got} {error.instance!r}{hint}"
    if validator == "pattern":
        return f"{where}: {error.instance!r} does not have the expected form (regex {expected})"
    if validator == "propertyNames":
        return f"{where}: {error.message}"
    if validator == "oneOf":
        return f"{where}: give exactly one of `bootstrap` or `image` (a registry image pinned by @sha256 digest)"
    return f"{where}: {error.message}"


def _walk(data: Any, dotted: str) -> list[tuple[str, Any]]:
    """Values at a dotted key pattern, with their concrete keys."""
    found = [("", data)]
    for part in dotted.split("."):
        step = []
        for prefix, node in found:
            if not isinstance(node, dict):
                continue
            keys = node.keys() if part == "*" else [part] if part in node else []
            step += [(f"{prefix}.{k}" if prefix else str(k), node[k]) for k in keys]
        found = step
    return found


def check_versions(path: Path, data: dict[str, Any]) -> None:
    problems = []
    for pattern in VERSION_KEYS:
        for key, value in _walk(data, pattern):
            try:
                Version(str(value))
            except InvalidVersion:
                problems.append(f"{path}: key {key}: {value!r} is not a version "
                                f"(expected something like 2.8.0, see PEP 440)")
    if problems:
        raise UserError("\n".join(problems))


def check_references(path: Path, data: dict[str, Any]) -> None:
    """Cross-key rules a JSON Schema cannot say."""
    if data["cuda_default"] not in data["cuda"]:
        raise UserError(f"{path}: key cuda_default: {data['cuda_default']!r} is not one of "
                        f"the CUDA builds under `cuda` ({', '.join(data['cuda'])})")
    flavors = data["flavors"]
    for name, spec in flavors.items():
        for other in ([spec["from"]] if "from" in spec else []) + spec.get("includes", []):
            if other not in flavors or other == name:
                raise UserError(f"{path}: key flavors.{name}: {other!r} (in from/includes) is not another "
                                f"flavor under `flavors`")
        if name != "runtime" and "from" not in spec:
            raise UserError(f"{path}: key flavors.{name}: add `from: runtime` (or another flavor) to say what it builds on")
    groups = [group["name"] for group in data["venv_layers"]]
    if len(set(groups)) != len(groups):
        raise UserError(f"{path}: key venv_layers: the group names {groups} repeat; give each group its own name")
    if "*" not in data["venv_layers"][-1]["packages"]:
        raise UserError(f"{path}: key venv_layers: the last group ({groups[-1]!r}) must list \"*\" so every "
                        f"locked package has a layer; add \"*\" to its packages")
    if data["default_variant"] not in flavors:
        raise UserError(f"{path}: key default_variant: {data['default_variant']!r} is not a "
                        f"flavor under `flavors` ({', '.join(flavors)})")
