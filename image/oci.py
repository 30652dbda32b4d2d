"""Write a single-layer OCI image archive from a root filesystem tarball, reproducibly.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that also carries
Docker's manifest.json, as `docker save` has written since Docker 25: `podman load`,
`docker load`, `kind load image-archive`, `k3s ctr images import`, `minikube image load` and
`skopeo copy oci-archive:...` all take the same file.

Reproducible: the layer keeps the input's member order (a hard link must follow its target),
drops access/change times, clamps modification times to SOURCE_DATE_EPOCH and is gzip'ed with
no name and no time; every JSON document is written with sorted keys; the archive's own
members are sorted and dated SOURCE_DATE_EPOCH. The same input gives the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 9
_DROPPED_PAX = ("atime", "ctime", "mtime")


@dataclass(frozen=True)
class ImageConfig:
    """What the runtime is told: the user, the command, the environment, the labels."""

    architecture: str  # OCI/Go names: amd64, arm64
    user: str
    entrypoint: Sequence[str]
    env: Sequence[str]
    labels: Mapping[str, str]
    created_by: str
    working_dir: str = "/"
    stop_signal: str = "SIGTERM"


@dataclass(frozen=True)
class Image:
    """What was written: the archive and the digests a registry or runtime will show."""

    archive: Path
    manifest_digest: str
    config_digest: str
    layer_digest: str
    layer_diff_id: str
    layer_size: int


class _HashingWriter(io.RawIOBase):
    """A sink that only counts and hashes what passes through it (and forwards it)."""

    def __init__(self, target: BinaryIO | None = None) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.target = target

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += len(view)
        if self.target is not None:
            self.target.write(view)
        return len(view)


def normalized_layer(rootfs: Path, gz_path: Path, epoch: int) -> tuple[str, str, int]:
    """Rewrite `rootfs` as a gzip'ed layer; return (digest, diff_id, compressed size)."""
    with gz_path.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=compressed, compresslevel=GZIP_LEVEL, mtime=0
        ) as gz:
            plain = _HashingWriter(gz)  # type: ignore[arg-type]
            with (
                tarfile.open(rootfs, "r:*") as src,
                tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as dst,
            ):
                for member in src:
                    if member.ischr() or member.isblk() or member.isfifo():
                        continue  # /dev is the runtime's: device nodes do not belong in a layer
                    member.mtime = min(int(member.mtime), epoch)
                    member.pax_headers = {
                        k: v for k, v in member.pax_headers.items() if k not in _DROPPED_PAX
                    }
                    member.uname = member.gname = ""
                    data = src.extractfile(member) if member.isreg() else None
                    dst.addfile(member, data)
    return (
        "sha256:" + compressed.sha.hexdigest(),
        "sha256:" + plain.sha.hexdigest(),
        compressed.size,
    )


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }


def write_archive(
    rootfs: Path, archive: Path, *, name: str, tag: str, config: ImageConfig, epoch: int
) -> Image:
    """Write `archive` (an OCI layout tar, Docker-loadable) holding `rootfs` as one layer."""
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    work = archive.with_name(archive.name + ".layer.gz")
    layer_digest, diff_id, layer_size = normalized_layer(rootfs, work, epoch)
    config_blob = _json(
        {
            "architecture": config.architecture,
            "os": "linux",
            "created": created,
            "config": {
                "User": config.user,
                "Entrypoint": list(config.entrypoint),
                "Env": list(config.env),
                "WorkingDir": config.working_dir,
                "Labels": dict(config.labels),
                "StopSignal": config.stop_signal,
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": config.created_by}],
        }
    )
    manifest_blob = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config_blob),
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size}],
            "annotations": {"org.opencontainers.image.created": created},
        }
    )
    manifest = _descriptor(OCI_MANIFEST, manifest_blob)
    manifest["annotations"] = {
        "io.containerd.image.name": f"docker.io/library/{name}:{tag}",
        "org.opencontainers.image.ref.name": tag,
    }
    index_blob = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [manifest]})  # fmt: skip
    config_digest = "sha256:" + hashlib.sha256(config_blob).hexdigest()

    def blob_path(digest: str) -> str:
        return "blobs/sha256/" + digest.removeprefix("sha256:")

    docker_manifest = json.dumps(
        [
            {
                "Config": blob_path(config_digest),
                "RepoTags": [f"{name}:{tag}"],
                "Layers": [blob_path(layer_digest)],
            }
        ]
    ).encode()
    small: dict[str, bytes] = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index_blob,
        "manifest.json": docker_manifest,
        blob_path(config_digest): config_blob,
        blob_path(manifest["digest"]): manifest_blob,
    }
    entries = sorted([*small, blob_path(layer_digest)])
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            out.addfile(info)
        for entry in entries:
            info = tarfile.TarInfo(entry)
            info.mode, info.mtime = 0o644, epoch
            if entry in small:
                info.size = len(small[entry])
                out.addfile(info, io.BytesIO(small[entry]))
            else:
                info.size = layer_size
                with work.open("rb") as layer:
                    out.addfile(info, layer)
    tmp.replace(archive)
    work.unlink()
    return Image(
        archive=archive,
        manifest_digest=manifest["digest"],
        config_digest=config_digest,
        layer_digest=layer_digest,
        layer_diff_id=diff_id,
        layer_size=layer_size,
    )
