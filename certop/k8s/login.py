"""Logging in to the Kubernetes API as kubectl does (in-cluster ServiceAccount, else
KUBECONFIG), with a timeout on every request. Kept apart from the operator (kopf) so that
`certop proxy` loads no more than it uses."""

from __future__ import annotations

import os
from typing import Any

import kubernetes

API_TIMEOUT = 10.0
"""Seconds any API request may take (the client's own default is to wait for ever)."""


class TimedApiClient(kubernetes.client.ApiClient):
    """The `kubernetes` client with a timeout on every request that names none (its own
    default is to wait forever on a connection that stopped answering)."""

    def call_api(self, method: Any, url: Any, header_params: Any = None, body: Any = None,
                 post_params: Any = None, _request_timeout: Any = None) -> Any:
        return super().call_api(method, url, header_params, body, post_params,
                                _request_timeout if _request_timeout is not None
                                else API_TIMEOUT)


def load_kubernetes_config() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return TimedApiClient()


def default_namespace() -> str:
    """certop's own namespace (the Downward API's POD_NAMESPACE), else "certop"."""
    return os.environ.get("POD_NAMESPACE", "certop")
