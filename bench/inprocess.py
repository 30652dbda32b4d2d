"""certop's issuance measured inside one process: from the runner's start to all certificates
stored, without interpreter start-up. Prints one JSON line: seconds, orders, ACME requests.

Usage: inprocess.py DIRECTORY_URL CA_PEM HTTP_PORT WORKDIR HOST [HOST ...]   (HTTP-01)
       inprocess.py --manifests FILE STATE_DIR DNS01_NAMESERVER   (the issuers in FILE)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

from certop.core.models import AcmeIssuer, ObjectRef
from certop.standalone import wiring
from certop.standalone.runner import StandaloneSettings


async def main(directory: str, ca: str, http_port: int, work: Path, names: list[str]) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    docs = [
        f"apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: i{i}}}\n"
        f"spec:\n  tls: [{{hosts: [{h}], secretName: s{i}}}]\n  rules:\n  - host: {h}\n"
        f"    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: "
        f"{{service: {{name: web, port: {{number: 80}}}}}}}}\n"
        for i, h in enumerate(names)
    ]
    (work / "ing.yaml").write_text("---\n".join(docs))
    settings = StandaloneSettings(
        files=(work / "ing.yaml",), state_dir=work / "state", services=("web=127.0.0.1:9",),
        cli_issuer=AcmeIssuer(ObjectRef("ClusterIssuer", "", "default"), directory, None),
        ca_bundle=Path(ca), self_check_addr=("127.0.0.1", http_port),
    )
    await measure(settings, http_port)


async def measure(settings: StandaloneSettings, http_port: int | None) -> None:
    """Load and wire (not timed), then time the runner from its start to all stored."""
    async with wiring.standalone(settings, "127.0.0.1", http_port, None) as wired:
        runner = wired.runner
        stop = asyncio.Event()
        start = time.monotonic()
        task = asyncio.create_task(runner.run(stop))
        await runner.wait_ready(timeout=600)
        took = time.monotonic() - start
        stop.set()
        await task
    stats = runner.stats
    print(json.dumps({"seconds": took, "issued": stats.issued, "failures": stats.failures,
                      "acme_requests": stats.acme_requests}))


if __name__ == "__main__":
    if sys.argv[1] == "--manifests":
        host, _, port = sys.argv[4].rpartition(":")
        asyncio.run(measure(StandaloneSettings(
            files=(Path(sys.argv[2]),), state_dir=Path(sys.argv[3]),
            services=("web=127.0.0.1:9",), dns01_nameservers=((host, int(port)),)), None))
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]),
                         sys.argv[5:]))
