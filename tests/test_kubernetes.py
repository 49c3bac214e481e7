"""deploy/kubernetes: every object valid for a current Kubernetes release, KEDA's objects valid for KEDA's
CRD schema (vendored in tests/schemas/keda), the kustomization rendering, and the manifests agreeing with
the code (queue name, setting names, time limits)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from rq import Queue

from ponybot import keys
from ponybot.settings import Settings, load_settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAY = DEPLOY / "overlays" / "example"
KEDA_SCHEMAS = ROOT / "tests" / "schemas" / "keda" / "keda.sh_v1alpha1.yaml"
#: A current release, shipped by every kubernetes-validate the dev extra allows.
KUBERNETES_VERSION = "1.33.0"
#: Objects whose schema is not Kubernetes' own: KEDA's (checked against its CRD) and the Prometheus operator's.
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
#: Parameters KEDA's redis scaler reads (a misspelt one is silently ignored by KEDA).
REDIS_SCALER_PARAMETERS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username", "usernameFromEnv",
    "passwordFromEnv", "listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
}
KUSTOMIZE_FILES = {"kustomization.yaml", "kustomizeconfig.yaml"}


def manifest_files() -> list[Path]:
    return sorted(path for path in DEPLOY.rglob("*.yaml") if path.name not in KUSTOMIZE_FILES)


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def source_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in manifest_files():
        for doc in load_all(path.read_text()):
            yield f"{path.relative_to(DEPLOY)}: {doc['kind']} {doc['metadata']['name']}", doc


def rendered(overlay: Path = OVERLAY) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the rendered overlay is not checked (the source files still are)")
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return load_all(result.stdout)


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def keda_schema(kind: str) -> dict[str, Any]:
    schemas: dict[str, dict[str, Any]] = yaml.safe_load(KEDA_SCHEMAS.read_text())
    return schemas[kind]


def check_object(obj: dict[str, Any]) -> None:
    """Kubernetes' own schema (strict: unknown fields are errors), or KEDA's CRD schema."""
    api = obj["apiVersion"]
    if api.startswith("keda.sh/"):
        assert api == "keda.sh/v1alpha1"
        jsonschema.validate(obj, keda_schema(obj["kind"]))
        for trigger in obj.get("spec", {}).get("triggers", []):
            if trigger["type"] == "redis":
                assert set(trigger["metadata"]) <= REDIS_SCALER_PARAMETERS, trigger["metadata"]
    elif not api.startswith(CUSTOM_GROUPS):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_source_object_is_valid() -> None:
    checked = 0
    for where, obj in source_objects():
        try:
            check_object(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            pytest.fail(f"{where}: {error}")
        checked += 1
    assert checked >= 10


def test_an_invalid_object_is_caught() -> None:
    """The checks above can fail: a misspelt field and a ScaledObject without its target are refused."""
    _where, bot = next((w, o) for w, o in source_objects() if o["metadata"]["name"] == "ponybot-bot")
    broken = yaml.safe_load(yaml.safe_dump(bot))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        check_object(broken)
    _where, scaler = next((w, o) for w, o in source_objects() if o["kind"] == "ScaledObject")
    del scaler["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        check_object(scaler)
    scaler["spec"]["scaleTargetRef"] = {"name": "x"}
    scaler["spec"]["triggers"][0]["metadata"]["listname"] = "typo"
    with pytest.raises(AssertionError):
        check_object(scaler)


def test_every_file_is_in_a_kustomization() -> None:
    listed: set[Path] = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []) + spec.get("components", []) + spec.get("configurations", []):
            target = (kustomization.parent / entry).resolve()
            assert target.exists(), f"{kustomization.relative_to(DEPLOY)} lists {entry}, which does not exist"
            listed.add(target)
    components = {path.parent for path in DEPLOY.rglob("kustomization.yaml")
                  if yaml.safe_load(path.read_text())["kind"] == "Component"}
    for path in manifest_files() + list(DEPLOY.rglob("kustomizeconfig.yaml")):
        assert path.resolve() in listed, f"{path.relative_to(DEPLOY)} is in no kustomization"
    assert components, "the Prometheus operator component is missing"


def test_rendered_overlay_is_valid() -> None:
    objects = rendered()
    for obj in objects:
        try:
            check_object(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {error}")
    assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"} == {"ponybot"}
    kinds = {obj["kind"] for obj in objects}
    assert kinds >= {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
                     "ScaledObject", "TriggerAuthentication", "PersistentVolumeClaim"}


def test_rendered_workers_bot_and_scaler_fit_together() -> None:
    objects = rendered()
    deployments = {obj["metadata"]["name"]: obj for obj in find(objects, "Deployment")}
    workers = [d for name, d in deployments.items() if name.startswith("ponybot-worker-")]
    assert [w["metadata"]["labels"]["ponybot.dev/model"] for w in workers] == ["pony-v4"]
    for worker in workers:
        name, model = worker["metadata"]["name"], worker["metadata"]["labels"]["ponybot.dev/model"]
        pod_labels = worker["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["ponybot.dev/model"] == model
        [budget] = [b for b in find(objects, "PodDisruptionBudget") if b["metadata"]["name"] == name]
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        [scaler] = [s for s in find(objects, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
        assert scaler["spec"]["minReplicaCount"] == 0
        [auth] = find(objects, "TriggerAuthentication")
        assert scaler["spec"]["triggers"][0]["authenticationRef"]["name"] == auth["metadata"]["name"]
        secrets = {s["metadata"]["name"]: s for s in find(objects, "Secret")}
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]["data"]


def check_models_fit(objects: list[dict[str, Any]]) -> dict[str, str]:
    """Each model's workers hold that model, its ScaledObject watches that model's RQ queue (ponybot.keys), and
    the settings file every pod reads configures it. Returns model -> the list KEDA watches."""
    [settings_file] = [c for c in find(objects, "ConfigMap") if c["metadata"]["name"].startswith("ponybot-file")]
    [environment] = [c for c in find(objects, "ConfigMap") if c["metadata"]["name"] == "ponybot-config"]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "ponybot.toml"
        path.write_text(settings_file["data"]["ponybot.toml"])
        settings = load_settings(path)
    watched = {}
    for worker in find(objects, "Deployment"):
        model = worker["metadata"]["labels"].get("ponybot.dev/model")
        if model is None:
            continue
        [container] = worker["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["ponybot", "worker", "--models", model]
        assert model in settings.models, f"{model} has workers but no [models.{model}] table"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert environment["data"]["PONYBOT_CONFIG"] == f"{mounts['settings']}/ponybot.toml"
        [scaler] = [s for s in find(objects, "ScaledObject")
                    if s["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]]
        [trigger] = scaler["spec"]["triggers"]
        assert trigger["type"] == "redis"
        watched[model] = trigger["metadata"]["listName"]
        assert watched[model] == Queue.redis_queue_namespace_prefix + keys.generate_queue(model), model
        if scaler["spec"]["minReplicaCount"] == 0:  # else the bot would refuse jobs KEDA has to see first
            assert environment["data"]["PONYBOT_WORKER__ON_DEMAND"] == "true"
    return watched


def test_scaler_watches_the_workers_queue() -> None:
    """KEDA's list is the RQ queue the workers of its model take jobs from."""
    assert check_models_fit(rendered()) == {"pony-v4": "rq:queue:ponybot-generate:pony-v4"}


def test_a_second_model_as_the_readme_says(tmp_path: Path) -> None:
    """The README's steps, literally: copy models/pony-v4 to models/pony-v3, replace pony-v4 by pony-v3 in its
    kustomization.yaml, add its table and folder. Its own workers hold pony-v3, watched on pony-v3's queue."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy)
    folder = copy / "models" / "pony-v3"
    shutil.copytree(copy / "models" / "pony-v4", folder)
    kustomization = folder / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("pony-v4", "pony-v3"))
    base = copy / "base"
    (base / "kustomization.yaml").write_text((base / "kustomization.yaml").read_text().replace(
        "  - ../models/pony-v4\n", "  - ../models/pony-v4\n  - ../models/pony-v3\n"))
    with (base / "ponybot.toml").open("a") as toml:
        toml.write('\n[models.pony-v3]\nsource = "/models/pony-diffusion-v3.safetensors"\n')
    objects = rendered(copy / "overlays" / "example")
    assert check_models_fit(objects) == {"pony-v4": "rq:queue:ponybot-generate:pony-v4",
                                         "pony-v3": "rq:queue:ponybot-generate:pony-v3"}
    names = sorted(o["metadata"]["name"] for o in objects if o["kind"] in ("Deployment", "ScaledObject"))
    assert names == ["ponybot-bot", "ponybot-worker-pony-v3", "ponybot-worker-pony-v3", "ponybot-worker-pony-v4",
                     "ponybot-worker-pony-v4"]
    # a scaler that does not follow the folder's model is caught
    (copy / "worker" / "scaledobject.yaml").write_text((copy / "worker" / "scaledobject.yaml").read_text().replace(
        "listName: rq:queue:ponybot-generate:MODEL", "listName: rq:queue:ponybot-other:MODEL"))
    with pytest.raises(AssertionError, match="pony-v"):
        check_models_fit(rendered(copy / "overlays" / "example"))


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, obj in source_objects():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield where, obj["spec"]["template"]["spec"]


def configured(name: str) -> str | None:
    [config] = [obj for _w, obj in source_objects() if obj["kind"] == "ConfigMap"]
    value: str | None = config["data"].get(name)
    return value


def test_workers_outlast_their_longest_job() -> None:
    cap = configured("PONYBOT_WORKER__JOB_TIMEOUT_S")  # no default: a worker's limit follows its measured speed
    assert cap, "the ConfigMap must cap jobs (worker.job_timeout_s): the grace period has to outlast the longest"
    job_timeout = int(cap)
    workers = [(w, spec) for w, spec in pod_specs() if "worker" in w]
    assert workers
    for where, spec in workers:
        assert spec["terminationGracePeriodSeconds"] > job_timeout, where
        [container] = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert any(mount["name"] == "models" for mount in container["volumeMounts"])
    for _where, scaler in source_objects():
        if scaler["kind"] == "ScaledObject":
            assert scaler["spec"]["cooldownPeriod"] > job_timeout


def test_pods_run_unprivileged_with_probes() -> None:
    for where, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, where
            assert "livenessProbe" in container, where
    [(_where, bot)] = [(w, s) for w, s in pod_specs() if "bot.yaml" in w]
    assert "nvidia.com/gpu" not in str(bot)
    [bot_deployment] = [o for _w, o in source_objects() if o["metadata"]["name"] == "ponybot-bot"]
    assert bot_deployment["spec"]["replicas"] == 1 and bot_deployment["spec"]["strategy"]["type"] == "Recreate"
    scraped = set()
    for _where, obj in source_objects():
        if obj["kind"] == "Deployment" and obj["metadata"]["labels"]["app.kubernetes.io/component"] != "gallery":
            template = obj["spec"]["template"]  # the bot and the workers are scraped on their metrics port
            port = template["metadata"]["annotations"]["prometheus.io/port"]
            assert port in {str(p["containerPort"]) for c in template["spec"]["containers"] for p in c["ports"]}
            scraped.add(obj["metadata"]["labels"]["app.kubernetes.io/component"])
    assert scraped == {"bot", "worker"}


def test_environment_names_are_settings() -> None:
    """Every PONYBOT_* name in the manifests is a setting of config.example.toml (PONYBOT_SECTION__KEY)."""
    names = configured_names()
    for _where, spec in pod_specs():
        for container in spec["containers"]:
            names |= {item["name"] for item in container.get("env", [])}
    defaults = Settings().model_dump()
    ponybot_names = {name for name in names if name.startswith("PONYBOT_") and name != "PONYBOT_CONFIG"}
    assert len(ponybot_names) >= 8
    for name in ponybot_names:
        section, _, key = name.removeprefix("PONYBOT_").lower().partition("__")
        assert section in defaults and key in defaults[section], f"{name} is no setting"
    assert names - ponybot_names <= {"HF_HOME", "PONYBOT_CONFIG"}  # PONYBOT_CONFIG: the settings file


def configured_names() -> set[str]:
    [config] = [obj for _w, obj in source_objects() if obj["kind"] == "ConfigMap"]
    return set(config["data"])


def with_gallery(tmp_path: Path) -> list[dict[str, Any]]:
    """The example overlay with its commented gallery component switched on, as its comment says."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "overlays" / "example" / "kustomization.yaml"
    text = kustomization.read_text()
    assert "# components:\n" in text and "#   - ../../components/gallery" in text
    kustomization.write_text(text.replace("# components:\n", "components:\n").replace(
        "#   - ../../components/gallery", "  - ../../components/gallery"))
    return rendered(copy / "overlays" / "example")


def test_gallery_component_renders_valid_and_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the gallery component: every object valid; the bot hands images over (gallery.enabled in the shared
    config); the gallery's settings load from what its pod gets, listen where its Service and probes point,
    and keep the database and images on its volume."""
    objects = with_gallery(tmp_path)
    for obj in objects:
        check_object(obj)
    [config] = [c for c in find(objects, "ConfigMap") if c["metadata"]["name"] == "ponybot-config"]
    assert config["data"]["PONYBOT_GALLERY__ENABLED"] == "true"
    [gallery] = [d for d in find(objects, "Deployment") if d["metadata"]["name"] == "ponybot-gallery"]
    spec = gallery["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["image"] == "registry.example.com/ponybot/gallery:0.1.0"
    assert container["args"] == ["ponybot", "gallery"]
    assert gallery["spec"]["replicas"] == 1 and gallery["spec"]["strategy"]["type"] == "Recreate"  # SQLite, RWO
    for name, value in config["data"].items():
        monkeypatch.setenv(name, value)
    for item in container["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
        else:
            # the bot's token too: the gallery asks Discord who may see and do what (gallery.access)
            assert item["valueFrom"]["secretKeyRef"]["name"] in {"ponybot-redis", "ponybot-gallery", "ponybot-discord"}
    [settings_file] = [c for c in find(objects, "ConfigMap") if c["metadata"]["name"].startswith("ponybot-file")]
    path = tmp_path / "ponybot.toml"
    path.write_text(settings_file["data"]["ponybot.toml"])
    monkeypatch.setenv("PONYBOT_CONFIG", str(path))
    section = load_settings().gallery
    assert section.enabled and section.host == "0.0.0.0"
    [port] = container["ports"]
    assert port["containerPort"] == section.port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    [service] = [s for s in find(objects, "Service") if s["metadata"]["name"] == "ponybot-gallery"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"].items() <= gallery["spec"]["template"]["metadata"]["labels"].items()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert claim in {c["metadata"]["name"] for c in find(objects, "PersistentVolumeClaim")}
    assert section.database_url == f"sqlite:///{mounts['data']}/gallery.db"
    assert section.store_dir.is_relative_to(mounts["data"])
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]  # the volume is writable
