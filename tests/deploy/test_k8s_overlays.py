"""The cpu and gpu overlays: where workers run, which image, and a registry that agrees."""

from __future__ import annotations

from . import k8s
from .project import K8S_BASE, without_worker_side


def test_cpu_overlay_uses_no_gpu() -> None:
    objects = k8s.render(k8s.overlay("cpu"))
    assert "nvidia.com/gpu" not in k8s.render_text(k8s.overlay("cpu"))
    assert all(m.get("n_gpu_layers", 0) == 0 for m in k8s.local_models(objects).values())


def test_gpu_overlay_puts_every_worker_on_a_gpu() -> None:
    objects = k8s.render(k8s.overlay("gpu"))
    models = k8s.local_models(objects)
    workers = [d for d in k8s.of_kind(objects, "Deployment") if k8s.worker_model(d)]
    assert workers
    for deployment in workers:
        model = k8s.worker_model(deployment)
        assert model is not None
        pod = k8s.pod_spec(deployment)
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"].split(":")[0].endswith("slm-server-gpu")
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert models[model]["n_gpu_layers"] != 0, f"{model} would sit on a GPU and run on the CPU"
        # no spare GPU for a surge pod
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    for name in ("gateway",):
        gateway = k8s.one(objects, "Deployment", name)
        assert "nvidia.com/gpu" not in str(gateway), "the gateway needs no GPU"
        assert "tolerations" not in k8s.pod_spec(gateway)


def test_overlay_registries_serve_the_same_models() -> None:
    base = k8s.local_models(k8s.render(K8S_BASE))
    gpu = k8s.local_models(k8s.render(k8s.overlay("gpu")))
    assert without_worker_side(gpu) == without_worker_side(base)
