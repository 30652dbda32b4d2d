"""certop's container image as `make image` builds it and as manifests/ runs it: read-only root
filesystem, uid/gid 65532, every capability dropped, no new privileges, /tmp the only writable
place (the flags are read from the Deployment), `--network=host` so that loopback is shared
with the test: curl, Pebble and the Kubernetes emulator on the host talk to certop inside."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pebblectl
import pytest
from echo import Echo
from kube import wait_for
from kubernetes import client
from manifest_yaml import ingress_yaml, write_ingress
from operatorctl import (
    api_client,
    clusterissuer,
    emulator_process,
    kubeconfig,
    read_secret,
    status,
    web_ingress,
)
from podmanctl import IMAGE as NAME
from podmanctl import ROOT, Built, Podman, build
from proxy_helpers import self_signed_files

from certop import __version__

pytestmark = pytest.mark.slow
UID = 65532
SITE = "opt/certop/lib/python3.11/site-packages/"
HOST = "web.certop.test"


@pytest.fixture
def backend() -> Iterator[Echo]:
    with Echo("web") as echo:
        yield echo


def owned_dir(path: Path) -> Path:
    """A folder the container's user may write (as a volume is for a pod with fsGroup)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


def curl(port: int, host: str, cacert: Path | str,
         *extra: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--cacert", str(cacert), *extra,
         "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/"],
        capture_output=True, text=True, check=False)  # fmt: skip


def wait_curl(container: Any, port: int, host: str, cacert: Path | str, *extra: str,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """curl (with `extra` options) until certop answers over a certificate curl verifies;
    fail fast if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert container.running(), f"certop exited: {container.text()}"
        done = curl(port, host, cacert, *extra)
        if done.returncode == 0:
            return done
        assert time.monotonic() < deadline, f"curl: {done.stderr} / {container.text()[-3000:]}"
        time.sleep(0.1)  # not serving a verifiable certificate yet: ask again


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


# -- what is in the image -----------------------------------------------------------------


def test_the_image_config_is_what_the_manifests_expect(built: Built) -> None:
    config = built.config()
    run = config["config"]
    assert run["User"] == f"{UID}:{UID}"
    assert run["Entrypoint"] == ["/opt/certop/bin/certop"]  # exec form: no shell
    assert "PYTHONDONTWRITEBYTECODE=1" in run["Env"]
    labels = run["Labels"]
    revision = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", *build.SOURCES, "image")
    assert labels["org.opencontainers.image.revision"] == revision + ("-dirty" if dirty else "")
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    # Where the source is published, when the build knows it (never a guessed address).
    assert labels.get("org.opencontainers.image.source", "") == build.source_url()
    commit_time = git("log", "-1", "--format=%cI")
    assert config["created"][:10] == commit_time[:10]  # SOURCE_DATE_EPOCH: the commit's time
    # The budget of the issue, measured in docs/benchmarks.md.
    assert built.summary["compressed_bytes"] <= 60_000_000, built.summary


def test_the_layer_holds_a_compiled_venv_and_nothing_the_install_needed(built: Built) -> None:
    sources: set[str] = set()
    pycs: dict[str, int] = {}
    names: set[str] = set()
    unsafe: list[str] = []
    packages = shebang = resolv = ""
    with built.layer() as layer:
        for member in layer:
            name = member.name.removeprefix("./")
            names.add(name)
            sticky = member.isdir() and member.mode & 0o1000  # /tmp, /var/tmp
            if member.mode & 0o002 and not member.issym() and not sticky:
                unsafe.append(name)
            if member.isreg() and member.uid != 0:
                unsafe.append(f"{name} (uid {member.uid})")
            if member.isreg() and member.mode & 0o6000:
                unsafe.append(f"{name} (set-user/group-ID)")
            if not member.isreg():
                continue
            if name.startswith(SITE) and name.endswith(".py"):
                sources.add(name)
            elif name.startswith(SITE) and name.endswith(".pyc"):
                head = layer.extractfile(member).read(8)  # type: ignore[union-attr]
                pycs[name] = struct.unpack("<I", head[4:8])[0]
            elif name == "etc/resolv.conf":
                resolv = layer.extractfile(member).read().decode()  # type: ignore[union-attr]
            elif name == "usr/share/certop/packages.txt":
                packages = layer.extractfile(member).read().decode()  # type: ignore[union-attr]
            elif name == "opt/certop/bin/certop":
                shebang = layer.extractfile(member).readline().decode()  # type: ignore[union-attr]
    assert not unsafe, unsafe
    # Nothing of the build machine: the runtime provides both.
    assert "etc/hostname" not in names
    assert resolv == "", resolv
    assert shebang == "#!/opt/certop/bin/python\n"
    # Every module has its .pyc, hash-based and unchecked: nothing to write or re-stat at import
    # on a read-only root filesystem, and the same bytes in every build.
    missing = []
    for source in sources:
        folder, _, file = source.rpartition("/")
        pyc = f"{folder}/__pycache__/{file[:-3]}.cpython-311.pyc"
        if pycs.get(pyc) != 0b01:
            missing.append((source, pycs.get(pyc)))
    assert not missing, missing[:10]
    assert len(sources) > 1000
    # What only the install needed is gone; so is what certop never imports.
    for gone in ("opt/certop/bin/pip", SITE + "pip/__init__.py", SITE + "setuptools/__init__.py",
                 SITE + "kubernetes/aio/__init__.py", "usr/lib/python3.11/ensurepip/__init__.py",
                 "opt/certop/bin/activate"):  # fmt: skip
        assert gone not in names, gone
    assert not [n for n in names if n.startswith(SITE) and "/tests/" in n]
    # The list of what the image holds, Debian's packages and Python's distributions.
    lines = set(packages.splitlines())
    assert f"python certop {__version__}" in lines
    assert "python kubernetes 37.0.2" in lines
    assert any(line.startswith("debian python3.11-minimal ") for line in lines)
    assert any(line.startswith("debian ca-certificates ") for line in lines)
    assert not any(line.startswith(("debian python3-venv ", "python pip ")) for line in lines)


def test_the_archive_reads_as_an_oci_layout_and_as_a_docker_archive(built: Built) -> None:
    """What kind, k3s (containerd) and minikube read: skopeo is the reader here."""

    def skopeo(*args: str) -> str:
        return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True,
                              timeout=120).stdout  # fmt: skip

    raw = skopeo("inspect", "--raw", f"oci-archive:{built.archive}")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == built.summary["manifest"]
    docker = json.loads(skopeo("inspect", "--config", f"docker-archive:{built.archive}"))
    assert docker["config"]["User"] == f"{UID}:{UID}"
    assert docker["rootfs"]["diff_ids"] == built.config()["rootfs"]["diff_ids"]
    with tarfile.open(built.archive) as outer:
        index = json.load(outer.extractfile("index.json"))  # type: ignore[arg-type]
        tags = json.load(outer.extractfile("manifest.json"))[0]["RepoTags"]  # type: ignore[arg-type]
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == NAME
    assert tags == [f"certop:{__version__}"]


# -- running it as manifests/ does ---------------------------------------------------------


def test_certop_version(podman: Podman) -> None:
    done = podman.run(NAME, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"certop {__version__}"


def test_without_a_cluster_the_operator_exits_with_one_clear_line(podman: Podman) -> None:
    for command in ("operator", "proxy", "run"):
        done = podman.run(NAME, command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("certop: error: no Kubernetes login"), (
            command, done.stderr)  # fmt: skip


def test_standalone_serves_a_supplied_certificate_to_curl(
        podman: Podman, tmp_path: Path, backend: Echo) -> None:
    files = owned_dir(tmp_path / "in")
    (files / "web.yaml").write_text(ingress_yaml("web", HOST))
    cert, _ = self_signed_files(files, "web", (HOST,))
    for path in files.iterdir():
        os.chown(path, UID, UID)
    state = owned_dir(tmp_path / "state")
    https, admin = pebblectl.free_port(), pebblectl.free_port()
    with podman.started(
        NAME, "standalone", "-f", "/in/web.yaml", "--state-dir", "/state",
        "--listen", "127.0.0.1", "--http-port", str(pebblectl.free_port()),
        "--https-port", str(https), "--admin-port", str(admin),
        "--certificate", "web-tls=/in/web.crt,/in/web.key",
        "--service", f"web=127.0.0.1:{backend.port}",
        log=tmp_path / "certop.log", mounts=[f"{files}:/in:ro", f"{state}:/state"],
    ) as container:  # fmt: skip
        done = wait_curl(container, https, HOST, cert)
        seen = json.loads(done.stdout)
        assert seen["service"] == "web"
        assert seen["headers"]["x-forwarded-proto"] == "https"
        proc = container.process_status()
        assert proc["Uid"].split()[:2] == [str(UID)] * 2
        assert proc["Gid"].split()[:2] == [str(UID)] * 2
        assert proc["CapEff"] == "0000000000000000"
        assert proc["NoNewPrivs"] == "1"
        assert wait_status(admin, "/healthz") == 200
        assert container.stop() == 0, container.text()
    assert "Traceback" not in container.text()


def test_standalone_as_the_readme_runs_it_published_ports_and_a_named_volume(
        podman: Podman, tmp_path: Path) -> None:
    """README's line: the default bridge network, ports 8080/8443 inside published on the host
    (here on 127.0.0.1 only), the state in a named volume. The backend is the container's own
    loopback, where nothing listens: certop answers 502 itself, over a certificate curl
    verifies, and redirects plain HTTP to HTTPS."""
    files = owned_dir(tmp_path / "in")
    (files / "ingress.yaml").write_text(ingress_yaml("web", HOST))
    cert, _ = self_signed_files(files, "web", (HOST,))
    for path in files.iterdir():
        os.chown(path, UID, UID)
    http, https = pebblectl.free_port(), pebblectl.free_port()
    volume = f"certop-state-{uuid.uuid4().hex[:8]}"
    with podman.started(
        NAME, "standalone", "-f", "/etc/certop/ingress.yaml", "--state-dir", "/var/lib/certop",
        "--http-port", "8080", "--https-port", "8443",
        "--public-http-port", "80", "--public-https-port", "443",
        "--certificate", "web-tls=/etc/certop/web.crt,/etc/certop/web.key",
        "--service", "web:80=127.0.0.1:9",
        log=tmp_path / "certop.log", publish=[f"127.0.0.1:{http}:8080", f"127.0.0.1:{https}:8443"],
        mounts=[f"{files}:/etc/certop:ro", f"{volume}:/var/lib/certop"],
    ) as container:  # fmt: skip
        done = wait_curl(container, https, HOST, cert, "-o", "/dev/null", "-w", "%{http_code}")
        assert done.stdout == "502", done.stdout
        redirect = subprocess.run(
            ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w",
             "%{http_code} %{redirect_url}", "-H", f"Host: {HOST}", f"http://127.0.0.1:{http}/shop"],
            capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert redirect == f"308 https://{HOST}/shop", redirect  # 443 outside, not 8443
        assert container.stop() == 0, container.text()


def wait_status(port: int, path: str) -> int:
    wait_for(lambda: status(port, path) == 200, timeout=30, what=f"{path} on :{port}")
    return status(port, path)


def test_standalone_gets_its_certificate_from_pebble_through_the_containers_http_port(
        podman: Podman, tmp_path: Path, backend: Echo, pebble: pebblectl.PebbleInfo) -> None:
    files = owned_dir(tmp_path / "in")
    write_ingress(files / "web.yaml", "web", [HOST], "web-tls")
    shutil.copy(pebble.api_ca, files / "pebble-api-ca.pem")
    for path in files.iterdir():
        os.chown(path, UID, UID)
    root = tmp_path / "pebble-root.pem"
    root.write_text(pebble.root_pem())
    # The state in a named volume, as a user keeps it: it starts as the image's /var/lib/certop
    # (uid 65532, 0700), with no chown on the host.
    volume = f"certop-state-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", volume)
    https = pebblectl.free_port()
    with podman.started(
        NAME, "standalone", "-f", "/in/web.yaml", "--state-dir", "/var/lib/certop",
        "--acme-directory", pebble.directory_url, "--acme-ca-bundle", "/in/pebble-api-ca.pem",
        "--email", "test@certop.test", "--listen", "127.0.0.1",
        "--http-port", str(pebble.http_port), "--https-port", str(https),
        "--service", f"web=127.0.0.1:{backend.port}",
        log=tmp_path / "certop.log", mounts=[f"{files}:/in:ro", f"{volume}:/var/lib/certop"],
    ) as container:  # fmt: skip
        done = wait_curl(container, https, HOST, root)
        assert json.loads(done.stdout)["service"] == "web"
        assert container.stop() == 0, container.text()
    state = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
    assert (state.stat().st_uid, oct(state.stat().st_mode & 0o777)) == (UID, "0o700")
    key = state / "certs/default/web-tls/current/tls.key"
    assert key.stat().st_uid == UID
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    keys = [p for p in state.rglob("*key*") if p.is_file()]  # the account's and the certificate's
    assert len(keys) >= 2 and all(p.stat().st_mode & 0o077 == 0 for p in keys), keys


def test_the_operator_in_its_container_issues_a_secret_through_the_emulator(
        podman: Podman, tmp_path: Path, pebble: pebblectl.PebbleInfo) -> None:
    with emulator_process(tmp_path) as (url, _):
        config = owned_dir(tmp_path / "kube")
        kubeconfig(config / "config", url)
        os.chown(config / "config", UID, UID)
        api = api_client(url)
        clusterissuer(api, pebble)
        admin = pebblectl.free_port()
        with podman.started(
            NAME, "operator", "--cluster-resource-namespace", "certop", "-A",
            "--listen", "127.0.0.1", "--admin-port", str(admin),
            "--solver-port", str(pebble.http_port),
            log=tmp_path / "operator.log", mounts=[f"{config}:/kube:ro"],
            env=["KUBECONFIG=/kube/config"],
        ) as container:  # fmt: skip
            wait_for(lambda: not container.running() or status(admin, "/readyz") == 200,
                     timeout=60, what="the operator to lead")  # fmt: skip
            assert container.running(), container.text()
            body = web_ingress("img.certop.test", "img-tls")
            client.NetworkingV1Api(api).create_namespaced_ingress("shop", body)

            wait_for(lambda: read_secret(api, "img-tls", "shop") is not None, timeout=90,
                     what=f"the Secret: {container.text()[-3000:]}")  # fmt: skip
            tls = read_secret(api, "img-tls", "shop")
            assert tls.type == "kubernetes.io/tls"
            assert {"tls.crt", "tls.key"} <= set(tls.data)
            assert container.stop() == 0, container.text()
