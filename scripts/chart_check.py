"""Renders and validates the lungstream Helm chart. Run it through scripts/chart-check.

For each values file it lints the chart and renders it with Helm 4.2 (helm-python-sdk)
and with the helm 3.6.2 command, which must give the same manifests, then checks every
manifest:

* against the Kubernetes JSON schemas of the oldest and newest supported versions, in
  strict mode, where an unknown field is an error. Kinds of KEDA and the Prometheus
  Operator are checked against their CRD schemas, and a kind without a schema is an
  error;
* the services' TOML files against the configuration structs in the Rust sources (the
  services reject unknown keys at start);
* the KEDA triggers' consumer groups and topics against the names the services use;
* references between manifests (Secret keys, ConfigMap keys, scale targets, selectors),
  probes, and the security settings every container must have;
* that no Ingress path routes the operations endpoints (/metrics, /healthz, /readyz);
* the Grafana dashboard's metric names and `service` labels against the Rust sources.

It also checks that helm/lungstream/values.schema.json is the schema that
`scripts/chart-check --write-schema` derives from values.yaml, so Helm rejects unknown
keys and wrong types in users' values files.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate.utils as kubernetes_schemas
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "lungstream"
RELEASE = "lungstream"
NAMESPACE = "lungstream"
# The chart's kubeVersion floor and the newest version kubernetes-validate 1.37.0 contains.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
COMPONENTS = ["ingest", "assemble", "preprocess", "infer", "report"]

# Configuration struct of each service's TOML file, and the file that defines it.
CONFIG_STRUCTS = {
    "ingest": ("IngestConfig", "services/ingest/src/config.rs"),
    "assemble": ("IngestConfig", "services/ingest/src/config.rs"),
    "preprocess": ("PreprocessServiceConfig", "services/preprocess/src/service.rs"),
    "infer": ("InferServiceConfig", "services/infer-worker/src/lib.rs"),
    "report": ("ReportConfig", "services/report/src/config.rs"),
}
# Input topic constant and service file of each lag-scaled service.
SCALED = {
    "preprocess": ("SERIES", "services/preprocess/src/service.rs"),
    "infer": ("LOBES", "services/infer-worker/src/lib.rs"),
}


def read_source(relative: str) -> str:
    return (ROOT / relative).read_text()


def rust_sources() -> list[Path]:
    return sorted(p for folder in ("crates", "services", "schemas") for p in (ROOT / folder).rglob("*.rs") if "/tests/" not in str(p))


# ---- Rust configuration structs ----------------------------------------------------


def struct_fields(source: str, name: str) -> dict[str, str] | None:
    """Returns the `pub` fields of struct `name` in `source` with their types."""
    match = re.search(r"pub struct " + name + r"\s*\{(.*?)\n\}", source, re.S)
    if not match:
        return None
    fields = {}
    for line in match.group(1).splitlines():
        field = re.match(r"\s*pub (\w+): (.+),\s*$", line)
        if field:
            fields[field.group(1)] = field.group(2).strip()
    return fields


@functools.cache
def find_struct(name: str, preferred: str) -> dict[str, str]:
    """Finds struct `name`, first in the file `preferred`, then anywhere in the sources."""
    fields = struct_fields(read_source(preferred), name)
    if fields is not None:
        return fields
    for path in rust_sources():
        fields = struct_fields(path.read_text(), name)
        if fields is not None:
            return fields
    raise LookupError(f"struct {name} not found in the Rust sources")


def check_toml(table: dict[str, Any], struct: str, source: str, where: str) -> list[str]:
    """Checks keys and scalar types of a TOML table against a Rust struct."""
    errors = []
    fields = find_struct(struct, source)
    for key, value in table.items():
        if key not in fields:
            errors.append(f"{where}.{key}: no such key in {struct} ({source}); the service would reject the file")
            continue
        rust_type = re.sub(r"^Option<(.*)>$", r"\1", fields[key])
        errors += check_value(value, rust_type, source, f"{where}.{key}")
    return errors


def check_value(value: Any, rust_type: str, source: str, where: str) -> list[str]:
    integers = {"u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize"}
    if rust_type in integers:
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{where}: {value!r} is not an integer ({rust_type})"]
    if rust_type in {"f32", "f64"}:
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{where}: {value!r} is not a number ({rust_type})"]
    if rust_type == "bool":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a boolean"]
    if rust_type in {"String", "SocketAddr", "PathBuf"}:
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string ({rust_type})"]
    if "BTreeMap<String, String>" in rust_type:
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not a table"]
        return [f"{where}.{key}: {item!r} is not a string" for key, item in value.items() if not isinstance(item, str)]
    vector = re.match(r"^Vec<(\w+)>$", rust_type)
    if vector:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not an array"]
        if vector.group(1) == "String":
            return [f"{where}: {item!r} is not a string" for item in value if not isinstance(item, str)]
        return [error for index, item in enumerate(value) for error in check_toml(item, vector.group(1), source, f"{where}[{index}]")]
    if re.match(r"^[A-Z]\w*$", rust_type):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not a table ({rust_type})"]
        return check_toml(value, rust_type, source, where)
    return []


# ---- schemas -----------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """Forbids properties a schema does not list, as kubernetes-validate's strict mode does."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
}


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = strict(CRD_MODELS[(api_version, kind)].model_json_schema(by_alias=True))
    return jsonschema.Draft202012Validator(schema)


# kubernetes-validate reads its definitions file (1 to 2 MB) again for every document.
kubernetes_schemas.schema_contents = functools.cache(kubernetes_schemas.schema_contents)


def schema_errors(document: dict[str, Any]) -> list[str]:
    key = (document["apiVersion"], document["kind"])
    if key in CRD_MODELS:
        return [f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message} (CRD schema)" for error in crd_validator(*key).iter_errors(document)]
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_schemas.validate(document, version, strict=True)
        except kubernetes_schemas.ValidationError as error:
            errors.append(f"{'.'.join(map(str, error.path)) or '(root)'}: {error.message} (Kubernetes {version})")
        except kubernetes_schemas.SchemaNotFoundError:
            errors.append(f"no schema for {key[0]} {key[1]} in Kubernetes {version}")
    return errors


# ---- cross-checks ------------------------------------------------------------------


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def index_by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Returns the documents by kind, then by name."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
    return by_kind


def check_references(documents: list[dict[str, Any]]) -> list[str]:
    """Checks references between the manifests of one rendering."""
    by_kind = index_by_kind(documents)
    secrets = by_kind.get("Secret", {})
    secret_keys = {name: set(secret.get("stringData", {})) | set(secret.get("data", {})) for name, secret in secrets.items()}

    errors = []
    for name, deployment in by_kind.get("Deployment", {}).items():
        errors += check_deployment(name, deployment, by_kind.get("ConfigMap", {}), secret_keys)
    errors += check_scaling(by_kind)
    errors += check_selectors(by_kind)
    errors += check_ingresses(by_kind.get("Ingress", {}))
    errors += check_configs(by_kind.get("ConfigMap", {}), by_kind.get("ScaledObject", {}))
    return errors


def check_deployment(name: str, deployment: dict[str, Any], configmaps: dict[str, dict[str, Any]], secret_keys: dict[str, set[str]]) -> list[str]:
    """Checks a Deployment's selector, security settings, volumes, keys, resources and probes."""
    errors = []
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    if not labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels):
        errors.append(f"Deployment {name}: selector does not match its pod labels")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        errors.append(f"Deployment {name}: pod is not runAsNonRoot")

    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for container in pod.get("initContainers", []) + pod["containers"]:
        where = f"Deployment {name} container {container['name']}"
        context = container.get("securityContext", {})
        if context.get("readOnlyRootFilesystem") is not True or context.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: needs readOnlyRootFilesystem true and allowPrivilegeEscalation false")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                errors.append(f"{where}: mounts undefined volume {mount['name']}")
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference and reference["name"] in secret_keys and reference["key"] not in secret_keys[reference["name"]]:
                errors.append(f"{where}: variable {variable['name']} reads key {reference['key']}, which Secret {reference['name']} lacks")
        resources = container.get("resources", {})
        for resource, amount in resources.get("limits", {}).items():
            if "/" in resource and resources.get("requests", {}).get(resource) != amount:
                errors.append(f"{where}: extended resource {resource} needs equal requests and limits")

    main = pod["containers"][0]
    tmp_volume = next((mount["name"] for mount in main.get("volumeMounts", []) if mount["mountPath"] == "/tmp"), None)
    if tmp_volume is None or "emptyDir" not in volumes.get(tmp_volume, {}):
        errors.append(f"Deployment {name}: /tmp is not an emptyDir (the root file system is read-only)")
    ports = {port["name"] for port in main.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = main.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ports:
            errors.append(f"Deployment {name}: {probe} must GET {path} on a declared port")

    for volume in volumes.values():
        if "configMap" in volume:
            configmap = configmaps.get(volume["configMap"]["name"])
            for item in volume["configMap"].get("items", []):
                if configmap is None or item["key"] not in configmap.get("data", {}):
                    errors.append(f"Deployment {name}: volume {volume['name']} reads missing ConfigMap key {item['key']}")
        if "secret" in volume and volume["secret"]["secretName"] in secret_keys:
            for item in volume["secret"].get("items", []):
                if item["key"] not in secret_keys[volume["secret"]["secretName"]]:
                    errors.append(f"Deployment {name}: volume {volume['name']} reads missing Secret key {item['key']}")
    return errors


def check_scaling(by_kind: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Checks that each scaler targets a rendered Deployment that nothing else scales."""
    errors = []
    deployments = by_kind.get("Deployment", {})
    scaled: dict[str, str] = {}
    for kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        for name, document in by_kind.get(kind, {}).items():
            target = document["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                errors.append(f"{kind} {name}: target Deployment {target} is not rendered")
            elif target in scaled:
                errors.append(f"{kind} {name}: Deployment {target} is already scaled by a {scaled[target]}")
            else:
                scaled[target] = kind
                if "replicas" in deployments[target]["spec"]:
                    errors.append(f"Deployment {target}: sets replicas although a {kind} scales it")
            for trigger in document["spec"].get("triggers", []):
                authentication = trigger.get("authenticationRef", {}).get("name")
                if authentication and authentication not in by_kind.get("TriggerAuthentication", {}):
                    errors.append(f"{kind} {name}: TriggerAuthentication {authentication} is not rendered")
    return errors


def check_selectors(by_kind: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Checks that every Service, PodDisruptionBudget and NetworkPolicy selects some pods."""
    errors = []
    pod_labels = [deployment["spec"]["template"]["metadata"]["labels"] for deployment in by_kind.get("Deployment", {}).values()]
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for name, document in by_kind.get(kind, {}).items():
            if kind == "Service":
                selector = document["spec"].get("selector", {})
            elif kind == "PodDisruptionBudget":
                selector = document["spec"]["selector"].get("matchLabels", {})
            else:
                selector = document["spec"]["podSelector"].get("matchLabels", {})
            if not any(labels_match(selector, labels) for labels in pod_labels):
                errors.append(f"{kind} {name}: selector matches no Deployment's pods")
    return errors


def ingress_path_matches(path: str, path_type: str, request: str) -> bool:
    """Returns whether an Ingress path routes `request`. Prefix matches whole path
    elements, as Kubernetes defines it; ImplementationSpecific is read as Prefix, the
    wider of the two."""
    if path_type == "Exact":
        return request == path
    prefix = [element for element in path.split("/") if element]
    return [element for element in request.split("/") if element][: len(prefix)] == prefix


def check_ingresses(ingresses: dict[str, dict[str, Any]]) -> list[str]:
    """Checks that no Ingress routes the operations endpoints, which share the HTTP port
    with the API and must stay inside the cluster (/metrics has counters per hospital)."""
    operations = re.findall(r'\.route\("(/[^"]*)"', read_source("crates/runtime/src/ops.rs"))
    if not operations:
        return ["cannot find the routes of crates/runtime/src/ops.rs; update check_ingresses in scripts/chart_check.py"]
    errors = []
    for name, ingress in ingresses.items():
        for rule in ingress["spec"].get("rules", []):
            for entry in rule.get("http", {}).get("paths", []):
                routed = [request for request in operations if ingress_path_matches(entry["path"], entry["pathType"], request)]
                if routed:
                    errors.append(f"Ingress {name}: path {entry['path']} ({entry['pathType']}) of host {rule.get('host')} routes {', '.join(routed)}; list only the public paths in <service>.ingress.paths")
    return errors


def check_configs(configmaps: dict[str, dict[str, Any]], scaled_objects: dict[str, dict[str, Any]]) -> list[str]:
    """Checks the services' TOML files and the KEDA triggers' group and topic names."""
    errors = []
    configs = {}
    configmap = next((c for name, c in configmaps.items() if name.endswith("-config")), None)
    if configmap is None:
        return ["no ConfigMap with the services' configuration files"]
    for component in COMPONENTS:
        text = configmap["data"].get(f"{component}.toml")
        if text is None:
            errors.append(f"ConfigMap: no {component}.toml")
            continue
        try:
            configs[component] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            errors.append(f"{component}.toml is not valid TOML: {error}")
            continue
        struct, source = CONFIG_STRUCTS[component]
        errors += check_toml(configs[component], struct, source, f"{component}.toml")

    events = read_source("schemas/src/events.rs")
    for component, (constant, source) in SCALED.items():
        scaled_object = next((d for name, d in scaled_objects.items() if name.endswith(f"-{component}")), None)
        if scaled_object is None or component not in configs:
            continue
        kafka = configs[component].get("kafka", {})
        prefix = kafka.get("topic_prefix", "")
        default_group = re.search(r'default_group:\s*"([^"]+)"', read_source(source))
        topic = re.search(r'pub const ' + constant + r': &str = "([^"]+)"', events)
        if default_group is None or topic is None:
            errors.append(f"cannot find the default consumer group in {source} or topic {constant} in schemas/src/events.rs; update SCALED in scripts/chart_check.py")
            continue
        default_group, topic = default_group.group(1), topic.group(1)
        metadata = scaled_object["spec"]["triggers"][0]["metadata"]
        expected = {"consumerGroup": prefix + kafka.get("group_id", default_group), "topic": prefix + topic, "bootstrapServers": kafka.get("brokers")}
        for key, value in expected.items():
            if metadata.get(key) != value:
                errors.append(f"ScaledObject of {component}: {key} is {metadata.get(key)!r}, but the service uses {value!r}")
    return errors


def check_dashboard() -> list[str]:
    """Checks that the dashboard uses only metrics and service names the code defines."""
    sources = "\n".join(path.read_text() for path in rust_sources())
    registered = set(re.findall(r'\.register\(\s*"([a-z_]+)"', sources))
    exposed = {f"lungstream_{name}{suffix}" for name in registered for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    services = set(re.findall(r'pub const SERVICE: &str = "([a-z]+)"', sources))
    dashboard = json.loads((CHART / "dashboards" / "lungstream.json").read_text())
    errors = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expression = target["expr"]
            for metric in set(re.findall(r"lungstream_[a-z0-9_]+", expression)):
                if metric not in exposed:
                    errors.append(f"dashboard panel {panel['title']!r}: metric {metric} is not registered by any service")
            for service in re.findall(r'service="([a-z]+)"', expression):
                if service not in services:
                    errors.append(f"dashboard panel {panel['title']!r}: no service is named {service!r}")
    return errors


# ---- values.schema.json -------------------------------------------------------------

# Values whose keys are free, such as Kubernetes objects, service configuration and
# labels. Any object or array is accepted there. Paths are dotted, and `*` stands for any
# service.
OPEN_VALUES = {
    "serviceAccount.annotations", "kafka.properties", "store.options", "podAnnotations", "podLabels",
    "podSecurityContext", "securityContext", "metrics.serviceMonitor.labels", "metrics.dashboard.annotations",
    "*.config", "*.podAnnotations", "*.nodeSelector", "*.affinity", "*.resources", "*.ingress.annotations",
    "*.service.annotations", "*.dicom.service.annotations", "infer.model.volume", "infer.gpu.nodeSelector",
}
# Allowed values of settings with a fixed set.
ENUM_VALUES = {
    "kafka.securityProtocol": ["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"],
    "kafka.sasl.mechanism": ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
    "store.credentials": ["secret", "environment"],
    "otel.protocol": ["http/protobuf", "http/json"],
    "image.pullPolicy": ["Always", "IfNotPresent", "Never"],
    "infer.device": ["", "auto", "cpu", "cuda"],
    "infer.network": ["demo", "narrow", "full"],
    "ingest.dicom.service.type": ["ClusterIP", "NodePort", "LoadBalancer"],
}
TENANT_SCHEMA = {
    "type": "object",
    "required": ["hospital"],
    "additionalProperties": False,
    "properties": {
        "hospital": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
        "tokens": {"type": "array", "items": {"type": "string", "minLength": 16}},
        "aeTitles": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 16}},
    },
}


# Items of `<service>.ingress.hosts` and `<service>.ingress.paths`.
INGRESS_HOSTS_SCHEMA = {
    "type": "array",
    "items": {"type": "object", "required": ["host"], "additionalProperties": False, "properties": {"host": {"type": "string"}}},
}
INGRESS_PATHS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["path"],
        "additionalProperties": False,
        "properties": {"path": {"type": "string", "pattern": "^/"}, "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]}},
    },
}


# The services' `retry` table (RetryConfig in crates/runtime/src/config.rs).
RETRY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"initial_ms": {"type": "integer", "minimum": 0}, "max_ms": {"type": "integer", "minimum": 0}, "multiplier": {"type": "number"}},
}


def value_schema(value: Any, path: str) -> dict[str, Any]:
    general = re.sub(r"^(ingest|assemble|preprocess|infer|report)\.", "*.", path)
    if path in OPEN_VALUES or general in OPEN_VALUES:
        return {"type": "object"} if isinstance(value, dict) else {}
    if path == "tenants":
        return {"type": "array", "items": TENANT_SCHEMA}
    if path == "retry":
        return RETRY_SCHEMA
    if general == "*.ingress.hosts":
        return INGRESS_HOSTS_SCHEMA
    if general == "*.ingress.paths":
        return INGRESS_PATHS_SCHEMA
    if path in ENUM_VALUES:
        return {"enum": ENUM_VALUES[path]}
    if isinstance(value, dict):
        properties = {key: value_schema(item, f"{path}.{key}" if path else key) for key, item in value.items()}
        return {"type": "object", "additionalProperties": False, "properties": properties}
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    return {}


def values_schema() -> str:
    """Derives values.schema.json from the types and keys of values.yaml."""
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "lungstream chart values"}
    schema |= value_schema(yaml.safe_load((CHART / "values.yaml").read_text()), "")
    return json.dumps(schema, indent=2) + "\n"


# ---- helm 3 -------------------------------------------------------------------------


def helm3(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Runs the helm 3 command that scripts/chart-check installed, with its state in .cache."""
    state = ROOT / ".cache" / "chart-check" / "helm-home"
    environment = dict(os.environ, HELM_CACHE_HOME=str(state / "cache"), HELM_CONFIG_HOME=str(state / "config"), HELM_DATA_HOME=str(state / "data"))
    return subprocess.run([os.environ["LUNGSTREAM_HELM3"], *arguments], capture_output=True, text=True, env=environment, check=False)


def check_helm3(path: Path, documents: list[dict[str, Any]]) -> list[str]:
    """Lints and renders with helm 3 and compares its manifests with Helm 4's."""
    errors = []
    lint = helm3("lint", str(CHART), "--strict", "--namespace", NAMESPACE, "-f", str(path))
    if lint.returncode != 0:
        errors.append(f"helm 3 lint failed: {(lint.stdout + lint.stderr).strip()}")
    rendered = helm3("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBERNETES_VERSIONS[0], "-f", str(path))
    if rendered.returncode != 0:
        return errors + [f"helm 3 template failed: {rendered.stderr.strip()}"]
    canonical = lambda items: Counter(yaml.safe_dump(item, sort_keys=True) for item in items)
    theirs = canonical(document for document in yaml.safe_load_all(rendered.stdout) if document)
    ours = canonical(documents)
    for text in (theirs - ours) + (ours - theirs):
        document = yaml.safe_load(text)
        errors.append(f"helm 3 and Helm 4 render {document['kind']} {document['metadata']['name']} differently")
    return errors


# ---- one values file ----------------------------------------------------------------


def check_values_file(path: Path) -> tuple[list[str], Counter]:
    values = helm.values_from_yaml(path.read_text())
    errors = []
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES_VERSIONS[0]}")
    errors += [f"helm lint: {message['path']}: {message['error']}" for message in report["messages"] if message["severity"] >= 2]
    with helm.Chart.load(str(CHART)) as chart:
        try:
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as error:
            return errors + [f"render failed: {error}"], Counter()
    documents = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if not document:
                continue
            where = f"{template} {document.get('kind')} {document.get('metadata', {}).get('name')}"
            missing = [key for key in ("apiVersion", "kind", "metadata") if key not in document]
            if missing:
                errors.append(f"{where}: missing {', '.join(missing)}")
                continue
            documents.append(document)
            errors += [f"{where}: {message}" for message in schema_errors(document)]
    errors += check_references(documents)
    errors += check_helm3(path, documents)
    return errors, Counter(document["kind"] for document in documents)


def print_outcome(name: str, errors: list[str], summary: str) -> bool:
    """Prints one check's result and returns whether it passed."""
    if errors:
        print(f"FAIL {name}")
        for error in errors:
            print(f"  {error}")
        return False
    print(f"ok   {name}: {summary}")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("values", nargs="*", type=Path, help="values files (default: helm/lungstream/ci/*.yaml)")
    parser.add_argument("--write-schema", action="store_true", help="write helm/lungstream/values.schema.json from values.yaml and stop")
    arguments = parser.parse_args()

    schema_path = CHART / "values.schema.json"
    if arguments.write_schema:
        schema_path.write_text(values_schema())
        print(f"chart-check: wrote {schema_path.relative_to(ROOT)}")
        return 0

    started = time.monotonic()
    helm3_version = helm3("version", "--short").stdout.strip()
    print(f"chart-check: Helm SDK {helm.helm_sdk_version()} (helm-python-sdk), helm {helm3_version}, kubernetes-validate {kubernetes_schemas.__version__}, Kubernetes {', '.join(KUBERNETES_VERSIONS)}")
    print("chart-check: checks values.schema.json against values.yaml, then for each values file:")
    print("  helm lint (strict), and rendering with Helm 4 and helm 3, which must give the same manifests;")
    print(f"  every manifest against the Kubernetes {' and '.join(KUBERNETES_VERSIONS)} schemas (strict) or the KEDA and Prometheus Operator CRD schemas;")
    print("  the services' TOML files against the Rust configuration structs, and the KEDA consumer groups and topics;")
    print("  references between manifests, probes, security contexts, and Ingress paths (no /metrics, /healthz, /readyz);")
    print("  and once, after the values files, the Grafana dashboard's metric and service names.")
    outcomes = []

    schema_current = schema_path.exists() and schema_path.read_text() == values_schema()
    schema_errors = [] if schema_current else ["does not match values.yaml; run scripts/chart-check --write-schema"]
    outcomes.append(print_outcome(str(schema_path.relative_to(ROOT)), schema_errors, "matches values.yaml"))

    for path in arguments.values or sorted((CHART / "ci").glob("*.yaml")):
        errors, kinds = check_values_file(path)
        name = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        summary = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
        outcomes.append(print_outcome(str(name), errors, f"{sum(kinds.values())} manifests ({summary})"))

    outcomes.append(print_outcome("dashboard", check_dashboard(), "every metric and service name exists in the Rust sources"))

    passed = outcomes.count(True)
    failed = outcomes.count(False)
    print(f"chart-check: {passed} passed, {failed} failed ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
