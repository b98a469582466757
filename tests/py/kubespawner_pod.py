"""Builds a notebook pod with KubeSpawner's own pod builder, given a
container_security_context (JSON, argv[1]), validates it against the Kubernetes schema, and
prints it as JSON. Proves a generated values snippet means what it says to KubeSpawner.
"""
import asyncio
import json
import sys

import kubernetes_validate
from kubernetes_asyncio.client import ApiClient
from kubespawner.objects import make_pod


async def main():
    ctx = json.loads(sys.argv[1])
    pod = make_pod(
        name="jupyter-alice",
        cmd=["jupyterhub-singleuser"],
        port=8888,
        image="quay.io/jupyter/base-notebook:latest",
        container_security_context=ctx,
    )
    # The client needs a running loop; only its serializer is used.
    async with ApiClient() as api:
        d = api.sanitize_for_serialization(pod)
    d.setdefault("apiVersion", "v1")
    d.setdefault("kind", "Pod")
    kubernetes_validate.validate(d, "1.33", strict=True)
    print(json.dumps(d))


asyncio.run(main())
