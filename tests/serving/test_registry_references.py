"""Registry references between entries: fallbacks, router targets and escalations, checked at load."""

from __future__ import annotations

from typing import Any

import pytest

from server.errors import RegistryError
from server.registry import RouterModel, parse_registry

LOCAL = {"gguf": "x.gguf"}
HOSTED = {"backend": "hosted", "litellm_model": "openai/big"}


def refused(models: dict[str, Any]) -> str:
    with pytest.raises(RegistryError) as info:
        parse_registry({"models": models}, source="reg.yaml")
    return str(info.value)


def test_a_router_entry_is_parsed_with_its_targets_objective_and_rules() -> None:
    registry = parse_registry({"models": {
        "small": {**LOCAL, "fallbacks": ["big"]}, "big": HOSTED, "tools-model": LOCAL,
        "auto": {"backend": "router", "aliases": ["fast"], "targets": ["small", "big"], "ttft_objective_s": 0.5,
                 "escalate": [{"tools": True, "to": "tools-model"}, {"prompt_tokens_over": 3000, "to": "big"}]},
    }})
    name, router = registry.resolve("fast") or ("", None)
    assert name == "auto" and isinstance(router, RouterModel)
    assert router.targets == ["small", "big"] and router.ttft_objective_s == 0.5
    assert [(r.to, r.tools, r.prompt_tokens_over) for r in router.escalate] == [
        ("tools-model", True, None), ("big", None, 3000)]
    assert parse_registry({"models": {"a": LOCAL, "r": {"backend": "router", "targets": ["a"]}}}) \
        .models["r"].ttft_objective_s == 1.0  # type: ignore[union-attr]


def test_fallbacks_must_name_other_existing_models() -> None:
    assert "reg.yaml: models.a.fallbacks[0]: 'ghost' is not a registry model" in refused(
        {"a": {**LOCAL, "fallbacks": ["ghost"]}})
    assert "models.a.fallbacks[0]: a model cannot name itself" in refused({"a": {**LOCAL, "fallbacks": ["a"]}})
    message = refused({"a": {**LOCAL, "aliases": ["alpha"]}, "b": {**LOCAL, "fallbacks": ["alpha"]}})
    assert "models.b.fallbacks[0]: 'alpha' is not a registry model (it is an alias of 'a'" in message
    assert "models.a.fallbacks: a model is listed twice" in refused(
        {"a": {**LOCAL, "fallbacks": ["b", "b"]}, "b": LOCAL})


def test_fallback_cycles_are_refused_naming_the_cycle() -> None:
    message = refused({"a": {**LOCAL, "fallbacks": ["b"]}, "b": {**HOSTED, "fallbacks": ["c"]},
                       "c": {**LOCAL, "fallbacks": ["a"]}})
    assert "models.a.fallbacks: fallbacks form a cycle: a -> b -> c -> a" in message
    assert "a -> b -> a" in refused({"a": {**LOCAL, "fallbacks": ["b"]}, "b": {**HOSTED, "fallbacks": ["a"]}})


def test_fallback_chains_are_followed_depth_first_each_model_once() -> None:
    registry = parse_registry({"models": {
        "a": {**LOCAL, "fallbacks": ["b", "c"]}, "b": {**HOSTED, "fallbacks": ["d"]},
        "c": {**LOCAL, "fallbacks": ["d"]}, "d": LOCAL}})
    assert registry.fallback_chain("a") == ["a", "b", "d", "c"]
    assert registry.fallback_chain("d") == ["d"]


def test_router_targets_and_escalations_must_be_local_or_hosted_models() -> None:
    base = {"a": LOCAL, "r2": {"backend": "router", "targets": ["a"]}}
    assert "models.r.targets[1]: 'ghost' is not a registry model" in refused(
        {**base, "r": {"backend": "router", "targets": ["a", "ghost"]}})
    assert "models.r.targets[0]: 'r2' is a router; only local or hosted models can be named here" in refused(
        {**base, "r": {"backend": "router", "targets": ["r2"]}})
    assert "models.r.targets[0]: a model cannot name itself" in refused(
        {**base, "r": {"backend": "router", "targets": ["r"]}})
    assert "models.r.escalate[0].to: 'r2' is a router" in refused(
        {**base, "r": {"backend": "router", "targets": ["a"], "escalate": [{"tools": True, "to": "r2"}]}})
    assert "models.a.fallbacks[0]: 'r2' is a router" in refused({**base, "a": {**LOCAL, "fallbacks": ["r2"]}})


def test_router_fields_are_validated_and_name_the_field() -> None:
    assert "models.r.targets: List should have at least 1 item" in refused(
        {"a": LOCAL, "r": {"backend": "router", "targets": []}})
    assert "models.r.targets: Value error, a target is listed twice" in refused(
        {"a": LOCAL, "r": {"backend": "router", "targets": ["a", "a"]}})
    assert "models.r.ttft_objective_s" in refused(
        {"a": LOCAL, "r": {"backend": "router", "targets": ["a"], "ttft_objective_s": 0}})
    assert "models.r.escalate.0: Value error, an escalation rule needs a condition" in refused(
        {"a": LOCAL, "r": {"backend": "router", "targets": ["a"], "escalate": [{"to": "a"}]}})
    assert "models.r.escalate.0.prompt_tokens_ovr" in refused(
        {"a": LOCAL, "r": {"backend": "router", "targets": ["a"], "escalate": [{"to": "a", "prompt_tokens_ovr": 1}]}})
    assert "models.r.fallbacks: a router falls back through its `targets`" in refused(
        {"a": LOCAL, "b": LOCAL, "r": {"backend": "router", "targets": ["a"], "fallbacks": ["b"]}})


def test_images_cannot_escalate_to_a_local_model_which_would_refuse_them() -> None:
    assert "models.r.escalate[0].to: 'a' is local, and local models do not read images" in refused(
        {"a": LOCAL, "big": HOSTED, "r": {"backend": "router", "targets": ["a"],
                                          "escalate": [{"images": True, "to": "a"}]}})
    parse_registry({"models": {"a": LOCAL, "big": HOSTED, "r": {
        "backend": "router", "targets": ["a"],
        "escalate": [{"tools": True, "to": "big"}, {"images": True, "to": "big"}]}}})


def test_the_commented_example_in_the_shipped_registry_is_valid_once_uncommented() -> None:
    import yaml

    from tests.conftest import REPO

    text = (REPO / "model_registry.yaml").read_text()
    example = text.split("\n#\n", 1)[1]
    data = yaml.safe_load(text)
    data["models"].update(yaml.safe_load("\n".join(line[1:] for line in example.splitlines())))
    data["models"]["smollm2"]["fallbacks"] = ["gpt"]
    registry = parse_registry(data)
    assert registry.fallback_chain("smollm2") == ["smollm2", "gpt", "gemma3-270m"]
    assert isinstance(registry.models["auto"], RouterModel)
