#!/usr/bin/env python3
"""Validate the container setup without a Docker engine.

    check_docker.py [--root REPO] [--no-yaml] [-v]

Checks docker/compose.yml, docker/nginx.conf, docker/prometheus.yml,
docker/Dockerfile and the Grafana provisioning under dashboards/:

  * compose.yml parses, has no obsolete `version:` key and defines the kafka,
    sluice-1, sluice-2, lb, prometheus and grafana services; no host port is
    published twice;
  * kafka is a single-node KRaft broker whose advertised listener matches the
    brokers every Sluice instance is given, with a health check they wait for;
  * each Sluice instance: environment keys all start with SLUICE__ (or are
    RUST_LOG), an intake instance id is set, the store lies on a named volume,
    its gRPC port is published, its build context and Dockerfile exist;
  * the instances together: distinct instance ids, distinct store volumes,
    the same image and build, and the same brokers, topics, consumer group and
    changelog topic (SHARED_SLUICE_SETTINGS);
  * lb runs a version-pinned official nginx image, publishes the public HTTP
    port 8080 (instances do not publish theirs), waits for every instance and
    mounts docker/nginx.conf, which must proxy to an upstream listing every
    instance with proxy_buffering off, proxy_http_version 1.1, the Upgrade and
    Connection headers, Last-Event-ID and a long proxy_read_timeout (and, for
    `resolve` upstream servers, a zone, a resolver and nginx >= 1.27.3);
  * every host path mounted in compose exists in the repository and every
    named volume is declared;
  * prometheus.yml parses and scrapes every instance on /metrics every 5s;
  * the Dockerfile has a builder and a runtime stage, builds `--bin sluice`,
    copies the binary from the builder, runs as a non-root user, and every
    file it COPYs from the build context exists;
  * the Grafana datasource uid matches the one the dashboards reference.

Uses PyYAML when it is installed; otherwise (or with --no-yaml) a small
built-in parser for the block-style YAML subset these files use.
Exit status 1 when any check fails. Prints `N passed, M failed`.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover
    tomllib = None  # type: ignore[assignment]

# The Sluice instances: one consumer group, one image, a store volume and an instance id each.
SLUICE_INSTANCES = ("sluice-1", "sluice-2")
# The nginx load balancer in front of them.
LB_SERVICE = "lb"
REQUIRED_SERVICES = ("kafka", *SLUICE_INSTANCES, LB_SERVICE, "prometheus", "grafana")
# The README's commands use localhost:8080: the load balancer publishes it.
PUBLIC_HTTP_PORT = "8080"
# Settings every instance must share (an unset one is shared when unset everywhere).
SHARED_SLUICE_SETTINGS = (
    "SLUICE__KAFKA__BROKERS",
    "SLUICE__KAFKA__STREAM_TOPIC_PREFIX",
    "SLUICE__INTAKE__TOPIC",
    "SLUICE__INTAKE__DLQ_TOPIC",
    "SLUICE__INTAKE__GROUP_ID",
    "SLUICE__INTAKE__CHANGELOG_TOPIC",
    "SLUICE__STORE__PATH",
)
# SSE keep-alives come every 15s and WebSocket pings every 30s; an idle proxy timeout should
# be far longer.
LB_MIN_READ_TIMEOUT = 300
DATASOURCE_UID = "prometheus"


# --------------------------------------------------------------------------
# Minimal YAML (fallback when PyYAML is missing)
# --------------------------------------------------------------------------

class MiniYamlError(ValueError):
    pass


def _strip_comment(line: str) -> str:
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    if text[0] in "\"'":
        if len(text) < 2 or text[-1] != text[0]:
            raise MiniYamlError(f"unterminated string: {text}")
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_scalar(part) for part in inner.split(",")] if inner else []
    if text.startswith("{") and text.endswith("}"):
        inner = text[1:-1].strip()
        result = {}
        for part in filter(None, (p.strip() for p in inner.split(","))):
            key, _, value = part.partition(":")
            result[_scalar(key)] = _scalar(value)
        return result
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("null", "~"):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*", text):
        return float(text)
    return text


def _split_key(text: str) -> tuple[str, str] | None:
    """Split `key: value` (value may be empty); None when not a mapping entry."""
    match = re.match(r"""^("[^"]*"|'[^']*'|[^\s:#][^:#]*?)\s*:(?:\s+(.*)|\s*)$""", text)
    if not match:
        return None
    return str(_scalar(match.group(1))), (match.group(2) or "")


def mini_yaml_load(source: str) -> Any:
    """Parse block mappings, block sequences and plain/quoted/flow scalars.

    Enough for compose, Prometheus and Grafana provisioning files; no anchors,
    multi-line strings or multiple documents."""
    lines = []
    for number, raw in enumerate(source.splitlines(), 1):
        if raw.strip() in ("---", "..."):
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise MiniYamlError(f"line {number}: tab in indentation")
        text = _strip_comment(raw)
        if text.strip():
            lines.append((number, len(text) - len(text.lstrip()), text.strip()))

    pos = 0

    def parse_block(indent: int) -> Any:
        nonlocal pos
        if pos >= len(lines):
            return None
        if lines[pos][2].startswith("- ") or lines[pos][2] == "-":
            return parse_sequence(indent)
        return parse_mapping(indent)

    def parse_value(rest: str, parent_indent: int, number: int) -> Any:
        nonlocal pos
        if rest.strip() in ("|", ">", "|-", ">-"):
            raise MiniYamlError(f"line {number}: block scalars are not supported")
        if rest.strip():
            return _scalar(rest)
        if pos < len(lines) and (lines[pos][1] > parent_indent or
                                 (lines[pos][1] == parent_indent and lines[pos][2].startswith("-"))):
            return parse_block(lines[pos][1])
        return None

    def parse_mapping(indent: int) -> dict:
        nonlocal pos
        result: dict = {}
        while pos < len(lines):
            number, line_indent, text = lines[pos]
            if line_indent < indent:
                break
            if line_indent > indent:
                raise MiniYamlError(f"line {number}: unexpected indentation")
            if text.startswith("- "):
                break
            entry = _split_key(text)
            if entry is None:
                raise MiniYamlError(f"line {number}: expected `key: value`, got {text!r}")
            key, rest = entry
            if key in result:
                raise MiniYamlError(f"line {number}: duplicate key {key!r}")
            pos += 1
            result[key] = parse_value(rest, indent, number)
        return result

    def parse_sequence(indent: int) -> list:
        nonlocal pos
        result: list = []
        while pos < len(lines):
            number, line_indent, text = lines[pos]
            if line_indent != indent or not (text.startswith("- ") or text == "-"):
                if line_indent > indent:
                    raise MiniYamlError(f"line {number}: unexpected indentation")
                break
            item = text[1:].strip()
            pos += 1
            if not item:
                result.append(parse_value("", indent, number))
                continue
            entry = _split_key(item) if not item.startswith(("\"", "'", "[", "{")) else None
            if entry is None:
                result.append(_scalar(item))
                continue
            # A mapping that starts on the dash line: re-read it as a mapping
            # indented to where its first key starts.
            item_indent = indent + (len(text) - len(text[1:].lstrip()))
            pos -= 1
            lines[pos] = (number, item_indent, item)
            result.append(parse_mapping(item_indent))
        return result

    if not lines:
        return None
    value = parse_block(lines[0][1])
    if pos != len(lines):
        raise MiniYamlError(f"line {lines[pos][0]}: could not parse {lines[pos][2]!r}")
    return value


# --------------------------------------------------------------------------

class Checker:
    def __init__(self, root: Path, use_yaml: bool, verbose: bool) -> None:
        self.root = root
        self.verbose = verbose
        self.passed = 0
        self.failed: list[str] = []
        self.notes: list[str] = []
        # What prometheus.yml must scrape; replaced by the instances compose.yml defines.
        self.scrape_targets = [f"{name}:8080" for name in SLUICE_INSTANCES]
        self.yaml = None
        if use_yaml:
            try:
                import yaml  # type: ignore[import-not-found]
                self.yaml = yaml
            except ImportError:
                self.notes.append("PyYAML is not installed; using the built-in YAML subset parser")

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"ok   {name}")
        else:
            self.failed.append(f"{name}" + (f": {detail}" if detail else ""))
        return ok

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def load_yaml(self, path: Path) -> Any:
        if not self.check(f"{self.rel(path)} exists", path.is_file()):
            return None
        try:
            text = path.read_text(encoding="utf-8")
            data = self.yaml.safe_load(text) if self.yaml else mini_yaml_load(text)
        except Exception as err:  # YAMLError or MiniYamlError
            self.check(f"{self.rel(path)} parses", False, str(err).replace("\n", " "))
            return None
        if not self.check(f"{self.rel(path)} parses to a mapping", isinstance(data, dict),
                          f"top level is {type(data).__name__}"):
            return None
        return data

    # ----------------------------------------------------------------------

    def run(self) -> int:
        docker_dir = self.root / "docker"
        compose = self.load_yaml(docker_dir / "compose.yml")
        if compose is not None:
            self.check_compose(compose, docker_dir)
        self.check_prometheus(docker_dir / "prometheus.yml")
        self.check_dockerfile(docker_dir / "Dockerfile")
        self.check_grafana()

        for note in self.notes:
            print(f"note: {note}")
        for failure in self.failed:
            print(f"FAIL {failure}")
        print(f"{self.passed} passed, {len(self.failed)} failed")
        return 1 if self.failed else 0

    # ----------------------------------------------------------------------

    @staticmethod
    def env_map(environment: Any) -> dict[str, str]:
        if isinstance(environment, dict):
            return {str(k): "" if v is None else str(v) for k, v in environment.items()}
        result = {}
        for item in environment or []:
            key, _, value = str(item).partition("=")
            result[key] = value
        return result

    def check_compose(self, compose: dict, compose_dir: Path) -> None:
        self.check("compose.yml has no obsolete top-level `version` key", "version" not in compose)
        services = compose.get("services")
        if not self.check("compose.yml has a services mapping", isinstance(services, dict)):
            return
        for name in REQUIRED_SERVICES:
            self.check(f"compose service {name!r} defined", isinstance(services.get(name), dict))

        declared_volumes = compose.get("volumes") or {}
        for service_name, service in services.items():
            if isinstance(service, dict):
                self.check_mounts(service_name, service, compose_dir, declared_volumes)
        self.check_host_ports(services)

        def service(name: str) -> dict:
            return services.get(name) if isinstance(services.get(name), dict) else {}

        kafka = service("kafka")
        instances = {name: service(name) for name in SLUICE_INSTANCES if service(name)}
        prometheus = service("prometheus")
        grafana = service("grafana")
        lb = service(LB_SERVICE)

        # kafka
        if kafka:
            image = str(kafka.get("image", ""))
            self.check("kafka image is apache/kafka", image.startswith("apache/kafka:"), image)
            env = self.env_map(kafka.get("environment"))
            for key in ("KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS",
                        "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS",
                        "KAFKA_CONTROLLER_LISTENER_NAMES"):
                self.check(f"kafka sets {key}", bool(env.get(key)))
            roles = set(env.get("KAFKA_PROCESS_ROLES", "").split(","))
            self.check("kafka runs combined broker,controller (KRaft)",
                       roles == {"broker", "controller"}, env.get("KAFKA_PROCESS_ROLES", ""))
            self.check("kafka topic auto-creation disabled",
                       env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "").lower() == "false")
            for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
                self.check(f"kafka {key}=1 (single node)", env.get(key) == "1", env.get(key, "unset"))
            health = kafka.get("healthcheck") or {}
            test = health.get("test") if isinstance(health, dict) else None
            test_text = " ".join(test) if isinstance(test, list) else str(test or "")
            self.check("kafka healthcheck uses kafka-broker-api-versions.sh",
                       "kafka-broker-api-versions.sh" in test_text, test_text or "no healthcheck")
            advertised = env.get("KAFKA_ADVERTISED_LISTENERS", "")
            advertised_hosts = {part.split("://", 1)[-1] for part in advertised.split(",") if part}
            for name, sluice in instances.items():
                brokers = self.env_map(sluice.get("environment")).get("SLUICE__KAFKA__BROKERS", "")
                self.check(f"{name}: SLUICE__KAFKA__BROKERS is an advertised kafka listener",
                           bool(brokers) and all(b in advertised_hosts for b in brokers.split(",")),
                           f"brokers {brokers!r}, advertised {advertised!r}")

        # sluice instances, one by one
        store_volumes: dict[str, str] = {}
        for name, sluice in instances.items():
            store_volumes[name] = self.check_sluice_instance(name, sluice, compose_dir)

        # sluice instances against each other
        if len(instances) == len(SLUICE_INSTANCES):
            self.check_instances_together(instances, store_volumes)

        # load balancer
        if lb:
            self.check_lb(lb, instances, compose_dir)

        # prometheus / grafana wiring
        if prometheus:
            targets = [self.mount_target(v) for v in prometheus.get("volumes") or []]
            self.check("prometheus mounts its config at /etc/prometheus/prometheus.yml",
                       "/etc/prometheus/prometheus.yml" in targets, str(targets))
        if grafana:
            targets = [self.mount_target(v) for v in grafana.get("volumes") or []]
            for target in ("/etc/grafana/provisioning", "/var/lib/grafana/dashboards"):
                self.check(f"grafana mounts {target}", target in targets, str(targets))
            env = self.env_map(grafana.get("environment"))
            self.check("grafana anonymous access enabled",
                       env.get("GF_AUTH_ANONYMOUS_ENABLED", "").lower() == "true")

        # Prometheus scrapes each instance at its HTTP listen port (checked in check_prometheus).
        self.scrape_targets = [f"{name}:{self.listen_port(sluice, 'SLUICE__HTTP__LISTEN')}"
                               for name, sluice in instances.items()] or self.scrape_targets

    def listen_port(self, service: dict, key: str) -> str:
        return self.env_map(service.get("environment")).get(key, "").rpartition(":")[2]

    @staticmethod
    def port_mappings(service: dict) -> list[tuple[str, str]]:
        """(host port, container port) for each published port, short or long syntax; a port
        published on a random host port has host port ''."""
        result = []
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                result.append((str(port.get("published", "")), str(port.get("target", ""))))
                continue
            parts = str(port).split("/")[0].split(":")
            container = parts[-1]
            host = parts[-2] if len(parts) >= 2 else ""
            result.append((host, container))
        return result

    def check_host_ports(self, services: dict) -> None:
        seen: dict[str, str] = {}
        clashes = []
        for name, service in services.items():
            if not isinstance(service, dict):
                continue
            for host, _ in self.port_mappings(service):
                if host and host in seen:
                    clashes.append(f"{host} ({seen[host]} and {name})")
                elif host:
                    seen[host] = name
        self.check("no host port is published by two services", not clashes, ", ".join(clashes))

    def check_sluice_instance(self, name: str, sluice: dict, compose_dir: Path) -> str:
        """The checks of one Sluice service; returns the named volume holding its store ('' when
        the store is not on a named volume)."""
        env = self.env_map(sluice.get("environment"))
        bad = [k for k in env if not (k.startswith("SLUICE__") or k == "RUST_LOG")]
        self.check(f"{name}: environment keys start with SLUICE__ or are RUST_LOG",
                   not bad, f"unexpected keys {bad}")
        for key in ("SLUICE__HTTP__LISTEN", "SLUICE__KAFKA__BROKERS", "SLUICE__STORE__PATH",
                    "SLUICE__INTAKE__INSTANCE_ID"):
            self.check(f"{name}: sets {key}", bool(env.get(key)))
        store = env.get("SLUICE__STORE__PATH", "")
        store_mount = None
        for volume in sluice.get("volumes") or []:
            kind, source, target = self.parse_mount(volume)
            if target and (store == target or store.startswith(target.rstrip("/") + "/")):
                store_mount = (kind, source, target)
        mounted = [self.mount_target(v) for v in sluice.get("volumes") or []]
        self.check(f"{name}: store path lies on a mounted volume", store_mount is not None,
                   f"store {store!r}, mounts {mounted}")
        store_volume = ""
        if store_mount is not None:
            kind, source, _ = store_mount
            self.check(f"{name}: store is on a named volume", kind == "volume" and bool(source),
                       f"{kind} {source!r}")
            store_volume = source if kind == "volume" else ""
        depends = sluice.get("depends_on")
        condition = depends.get("kafka", {}).get("condition") if isinstance(depends, dict) \
            and isinstance(depends.get("kafka"), dict) else None
        self.check(f"{name}: waits for kafka to be healthy", condition == "service_healthy",
                   f"depends_on {depends!r}")
        grpc_port = self.listen_port(sluice, "SLUICE__GRPC__LISTEN")
        if grpc_port and grpc_port != "0":
            self.check(f"{name}: publishes its gRPC listen port {grpc_port}",
                       any(host and container == grpc_port
                           for host, container in self.port_mappings(sluice)),
                       f"ports {sluice.get('ports')}")
        build = sluice.get("build")
        if self.check(f"{name}: has a build section", isinstance(build, dict), repr(build)):
            context = (compose_dir / str(build.get("context", "."))).resolve()
            self.check(f"{name}: build context is the repository root",
                       context == self.root.resolve(), self.rel(context))
            dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
            self.check(f"{name}: Dockerfile exists", dockerfile.is_file(), self.rel(dockerfile))
        return store_volume

    def check_instances_together(self, instances: dict[str, dict],
                                 store_volumes: dict[str, str]) -> None:
        envs = {name: self.env_map(s.get("environment")) for name, s in instances.items()}
        ids = {name: env.get("SLUICE__INTAKE__INSTANCE_ID", "") for name, env in envs.items()}
        given = [i for i in ids.values() if i]
        self.check("sluice instances have distinct intake instance ids",
                   len(given) == len(ids) and len(set(given)) == len(given), str(ids))
        volumes = [v for v in store_volumes.values() if v]
        self.check("sluice instances keep their stores on distinct volumes",
                   len(volumes) == len(store_volumes) and len(set(volumes)) == len(volumes),
                   str(store_volumes))
        images = {name: str(s.get("image", "")) for name, s in instances.items()}
        self.check("sluice instances run the same image",
                   len(set(images.values())) == 1 and all(images.values()), str(images))
        builds = {name: json.dumps(s.get("build"), sort_keys=True) for name, s in instances.items()}
        self.check("sluice instances build the same way", len(set(builds.values())) == 1, str(builds))
        for key in SHARED_SLUICE_SETTINGS:
            values = {name: env.get(key) for name, env in envs.items()}
            self.check(f"sluice instances agree on {key}", len(set(values.values())) == 1,
                       str(values))

    def check_lb(self, lb: dict, instances: dict[str, dict], compose_dir: Path) -> None:
        image = str(lb.get("image", ""))
        repo, _, tag = image.partition(":")
        self.check(f"{LB_SERVICE}: image is the official nginx image", repo in ("nginx", "library/nginx",
                   "docker.io/library/nginx"), image)
        version = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", tag)
        self.check(f"{LB_SERVICE}: nginx image is pinned to a version tag", version is not None, image)

        mappings = self.port_mappings(lb)
        public = [container for host, container in mappings if host == PUBLIC_HTTP_PORT]
        self.check(f"{LB_SERVICE}: publishes the public HTTP port {PUBLIC_HTTP_PORT}", bool(public),
                   f"ports {lb.get('ports')}")
        depends = lb.get("depends_on")
        depends_on = set(depends) if isinstance(depends, (dict, list)) else set()
        self.check(f"{LB_SERVICE}: depends on every sluice instance",
                   set(instances) <= depends_on, f"depends_on {depends!r}")
        for name, sluice in instances.items():
            self.check(f"{name}: HTTP port is not published (clients go through {LB_SERVICE})",
                       not any(host and container == self.listen_port(sluice, "SLUICE__HTTP__LISTEN")
                               for host, container in self.port_mappings(sluice)),
                       f"ports {sluice.get('ports')}")

        config_path = None
        for volume in lb.get("volumes") or []:
            kind, source, target = self.parse_mount(volume)
            if kind == "bind" and (target == "/etc/nginx/nginx.conf"
                                   or target.startswith("/etc/nginx/conf.d/")):
                config_path = (compose_dir / source).resolve()
        if not self.check(f"{LB_SERVICE}: mounts its nginx config from the repository",
                          config_path is not None and config_path.is_file(),
                          f"volumes {lb.get('volumes')}"):
            return
        try:
            config = parse_nginx(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            self.check(f"{self.rel(config_path)} parses", False, str(err))
            return
        self.check(f"{self.rel(config_path)} parses", True)
        self.check_nginx_config(self.rel(config_path), config, instances, public,
                                tuple(int(g) for g in version.groups("0")) if version else None)

    def check_nginx_config(self, where: str, config: list, instances: dict[str, dict],
                           public_container_ports: list[str],
                           nginx_version: tuple[int, ...] | None) -> None:
        directives = list(_nginx_walk(config))

        def args_of(name: str) -> list[list[str]]:
            return [args for directive, args, _ in directives if directive == name]

        listens = {a[0].rpartition(":")[2] for a in args_of("listen") if a}
        self.check(f"{where}: listens on the container port {LB_SERVICE} publishes",
                   bool(set(public_container_ports) & listens),
                   f"listen {sorted(listens)}, published {public_container_ports}")

        upstreams = {args[0]: children for directive, args, children in directives
                     if directive == "upstream" and args}
        passes = [a[0] for a in args_of("proxy_pass") if a]
        used = [u for u in upstreams if any(p.rstrip("/") in (f"http://{u}",) for p in passes)]
        if not self.check(f"{where}: proxy_pass goes to an upstream block", bool(used),
                          f"proxy_pass {passes}, upstreams {sorted(upstreams)}"):
            return
        servers = [args for name, args, _ in upstreams[used[0]] if name == "server"]
        addresses = {args[0] for args in servers if args}
        for name, sluice in instances.items():
            address = f"{name}:{self.listen_port(sluice, 'SLUICE__HTTP__LISTEN')}"
            self.check(f"{where}: upstream {used[0]} has {address}", address in addresses,
                       str(sorted(addresses)))
        if any("resolve" in args[1:] for args in servers):
            self.check(f"{where}: upstream servers with `resolve` have a shared zone",
                       any(name == "zone" for name, _, _ in upstreams[used[0]]))
            self.check(f"{where}: a resolver is configured for `resolve`",
                       bool(args_of("resolver")))
            self.check(f"{where}: `resolve` in upstream needs nginx 1.27.3 or later",
                       nginx_version is not None and nginx_version >= (1, 27, 3),
                       f"image version {nginx_version}")

        def has(name: str, *values: str) -> bool:
            return any([v.lower() for v in a] == [v.lower() for v in values] for a in args_of(name))

        self.check(f"{where}: proxy_buffering off (SSE)", has("proxy_buffering", "off"))
        self.check(f"{where}: proxy_http_version 1.1 (WebSocket)", has("proxy_http_version", "1.1"))
        headers = {a[0].lower(): a[1] for a in args_of("proxy_set_header") if len(a) >= 2}
        self.check(f"{where}: passes the Upgrade header", headers.get("upgrade") == "$http_upgrade",
                   str(headers.get("upgrade")))
        connection = headers.get("connection", "")
        mapped = any(d == "map" and len(a) >= 2 and a[0] == "$http_upgrade" and a[1] == connection
                     for d, a, _ in directives)
        self.check(f"{where}: sets Connection for WebSocket upgrades",
                   connection.lower() == "upgrade" or mapped, repr(connection))
        self.check(f"{where}: passes Last-Event-ID",
                   headers.get("last-event-id") == "$http_last_event_id",
                   str(headers.get("last-event-id")))
        timeouts = [nginx_seconds(a[0]) for a in args_of("proxy_read_timeout") if a]
        self.check(f"{where}: proxy_read_timeout of at least {LB_MIN_READ_TIMEOUT}s (SSE, WebSocket)",
                   bool(timeouts) and all(t is not None and t >= LB_MIN_READ_TIMEOUT for t in timeouts),
                   str(args_of("proxy_read_timeout")))

    @staticmethod
    def parse_mount(volume: Any) -> tuple[str, str, str]:
        """Return (type, source, target) for short or long volume syntax."""
        if isinstance(volume, dict):
            return (str(volume.get("type", "volume")), str(volume.get("source", "")),
                    str(volume.get("target", "")))
        parts = str(volume).split(":")
        if len(parts) == 1:
            return "volume", "", parts[0]  # anonymous volume
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
        return kind, source, target

    def mount_target(self, volume: Any) -> str:
        return self.parse_mount(volume)[2]

    def check_mounts(self, service_name: str, service: dict, compose_dir: Path,
                     declared_volumes: Any) -> None:
        for volume in service.get("volumes") or []:
            kind, source, target = self.parse_mount(volume)
            if kind == "bind":
                if source.startswith(("~", "$")):
                    self.check(f"{service_name}: bind mount {source} is inside the repository",
                               False, "use a path relative to docker/")
                    continue
                host = (compose_dir / source).resolve()
                inside = host == self.root.resolve() or self.root.resolve() in host.parents
                self.check(f"{service_name}: mounted host path {source} exists in the repository",
                           inside and host.exists(),
                           f"{self.rel(host)} {'missing' if inside else 'is outside the repository'}")
            elif kind == "volume" and source:
                self.check(f"{service_name}: named volume {source!r} is declared",
                           isinstance(declared_volumes, dict) and source in declared_volumes)

    # ----------------------------------------------------------------------

    def check_prometheus(self, path: Path) -> None:
        config = self.load_yaml(path)
        if config is None:
            return
        jobs = config.get("scrape_configs")
        if not self.check("prometheus.yml has scrape_configs", isinstance(jobs, list) and bool(jobs)):
            return
        for target in self.scrape_targets:
            found = None
            for job in jobs:
                if not isinstance(job, dict):
                    continue
                for static in job.get("static_configs") or []:
                    if isinstance(static, dict) and target in (static.get("targets") or []):
                        found = job
            if not self.check(f"prometheus.yml scrapes {target}", found is not None):
                continue
            self.check(f"prometheus job for {target} uses /metrics",
                       found.get("metrics_path", "/metrics") == "/metrics",
                       str(found.get("metrics_path")))
            interval = found.get("scrape_interval") or (config.get("global") or {}).get("scrape_interval")
            self.check(f"prometheus scrapes {target} every 5s", interval == "5s", str(interval))

    # ----------------------------------------------------------------------

    def check_dockerfile(self, path: Path) -> None:
        if not self.check(f"{self.rel(path)} exists", path.is_file()):
            return
        # Join continuation lines, drop comments and parser directives.
        instructions: list[tuple[str, str]] = []
        current = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            stripped = raw.strip()
            if not current and (not stripped or stripped.startswith("#")):
                continue
            if current and stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                current += stripped[:-1] + " "
                continue
            current += stripped
            word, _, rest = current.partition(" ")
            instructions.append((word.upper(), rest.strip()))
            current = ""

        stages: list[dict] = []
        for word, rest in instructions:
            if word == "FROM":
                match = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
                stages.append({"image": match.group(1) if match else rest,
                               "name": (match.group(2) or "").lower() if match else "",
                               "body": []})
            elif stages:
                stages[-1]["body"].append((word, rest))

        names = [s["name"] for s in stages]
        self.check("Dockerfile is multi-stage", len(stages) >= 2, f"{len(stages)} stage(s)")
        builder = next((s for s in stages if s["name"] == "builder"), None)
        self.check("Dockerfile has a stage named builder", builder is not None, f"stages {names}")
        if not stages:
            return
        runtime = stages[-1]
        self.check("Dockerfile's final (runtime) stage is not the builder",
                   runtime is not builder and runtime["name"] != "builder")
        self.check("runtime stage is debian:bookworm-slim", runtime["image"] == "debian:bookworm-slim",
                   runtime["image"])
        if builder is not None:
            self.check("builder stage uses a rust bookworm image",
                       builder["image"].startswith("rust:") and "bookworm" in builder["image"],
                       builder["image"])
            runs = " ".join(rest for word, rest in builder["body"] if word == "RUN")
            builds = [m.group(0) for m in re.finditer(r"cargo build[^&;|]*", runs)]
            self.check("builder runs cargo build --bin sluice",
                       any(re.search(r"--bin[ =]sluice\b", b) for b in builds), str(builds))
            self.check("builder builds --release --locked",
                       any("--release" in b and "--locked" in b for b in builds), str(builds))
            self.check("builder installs libclang-dev (bindgen for rocksdb)", "libclang-dev" in runs)

        body = runtime["body"]
        copies = [rest for word, rest in body if word == "COPY"]
        self.check("runtime copies the sluice binary from the builder",
                   any(c.startswith("--from=builder") and "release/sluice" in c for c in copies),
                   str(copies))
        users = [rest for word, rest in body if word == "USER"]
        self.check("runtime runs as a non-root user",
                   bool(users) and users[-1].split(":")[0] not in ("root", "0"), str(users))
        entry = [rest for word, rest in body if word == "ENTRYPOINT"]
        entry_text = entry[-1] if entry else ""
        self.check("runtime ENTRYPOINT runs sluice with --config", "sluice" in entry_text and
                   "--config" in entry_text, entry_text or "no ENTRYPOINT")
        exposed = " ".join(rest for word, rest in body if word == "EXPOSE")
        self.check("runtime exposes 8080", re.search(r"\b8080\b", exposed) is not None, exposed)
        self.check("runtime declares VOLUME /var/lib/sluice",
                   any("/var/lib/sluice" in rest for word, rest in body if word == "VOLUME"))

        # Every COPY/ADD source taken from the build context must exist there.
        context_sources: list[str] = []
        for stage in stages:
            for word, rest in stage["body"]:
                if word not in ("COPY", "ADD"):
                    continue
                if rest.startswith("["):
                    try:
                        args = json.loads(rest)
                    except ValueError:
                        args = shlex.split(rest)
                else:
                    args = shlex.split(rest)
                if any(a.startswith("--from=") for a in args):
                    continue
                paths = [a for a in args if not a.startswith("--")]
                context_sources.extend(paths[:-1])
        for source in context_sources:
            if any(ch in source for ch in "*?[") or source.startswith(("http://", "https://")):
                continue
            self.check(f"Dockerfile COPY source {source} exists in the build context",
                       (self.root / source).exists(), "missing")
        copied_roots = {s.rstrip("/").split("/")[0] for s in context_sources}
        self.check_cargo_targets(copied_roots)

        ignore_files = [self.root / ".dockerignore", path.parent / (path.name + ".dockerignore")]
        if not any(p.is_file() for p in ignore_files):
            self.notes.append("no .dockerignore (or docker/Dockerfile.dockerignore): a local target/ "
                              "directory would be sent to the builder with the build context")

    def check_cargo_targets(self, copied_roots: set[str]) -> None:
        """The Dockerfile copies only some paths; every explicit Cargo target
        (and build.rs) must be among them or the build fails."""
        manifest = self.root / "Cargo.toml"
        if tomllib is None or not manifest.is_file():
            return
        try:
            cargo = tomllib.loads(manifest.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, OSError) as err:
            self.check("Cargo.toml parses", False, str(err))
            return
        paths = []
        lib = cargo.get("lib")
        if isinstance(lib, dict) and lib.get("path"):
            paths.append(lib["path"])
        default_dirs = {"bin": "src/bin", "test": "tests", "bench": "benches", "example": "examples"}
        for section in ("bin", "test", "bench", "example"):
            for target in cargo.get(section) or []:
                if isinstance(target, dict) and target.get("path"):
                    paths.append(target["path"])
                elif isinstance(target, dict) and target.get("name") and section != "bin":
                    # Declared without a path: cargo looks in the conventional directory.
                    paths.append(f"{default_dirs[section]}/{target['name']}.rs")
        # Workspace members and path dependencies are part of the build too.
        workspace = cargo.get("workspace") or {}
        paths.extend(m for m in workspace.get("members") or [] if m not in (".", ""))
        for table in ("dependencies", "build-dependencies"):
            for dep in (cargo.get(table) or {}).values():
                if isinstance(dep, dict) and dep.get("path"):
                    paths.append(dep["path"])
        package = cargo.get("package") or {}
        build_script = package.get("build")
        if isinstance(build_script, str):
            paths.append(build_script)
        elif build_script is None and (self.root / "build.rs").is_file():
            paths.append("build.rs")
        missing = [p for p in paths if p.lstrip("./").split("/")[0] not in copied_roots]
        self.check("Dockerfile copies every path Cargo.toml needs", not missing,
                   f"not copied into the image: {missing}")

    # ----------------------------------------------------------------------

    def check_grafana(self) -> None:
        provisioning = self.root / "dashboards" / "provisioning"
        datasources = self.load_yaml(provisioning / "datasources" / "prometheus.yml")
        uids = set()
        if datasources is not None:
            for ds in datasources.get("datasources") or []:
                if isinstance(ds, dict):
                    uids.add(ds.get("uid"))
                    if ds.get("uid") == DATASOURCE_UID:
                        self.check("grafana datasource points at http://prometheus:9090",
                                   ds.get("url") == "http://prometheus:9090", str(ds.get("url")))
            self.check(f"grafana provisions a datasource with uid {DATASOURCE_UID!r}",
                       DATASOURCE_UID in uids, str(uids))
        providers = self.load_yaml(provisioning / "dashboards" / "sluice.yml")
        if providers is not None:
            paths = [(p.get("options") or {}).get("path") for p in providers.get("providers") or []
                     if isinstance(p, dict)]
            self.check("grafana dashboard provider reads /var/lib/grafana/dashboards",
                       "/var/lib/grafana/dashboards" in paths, str(paths))
        for dashboard_path in sorted((self.root / "dashboards").glob("*.json")):
            try:
                dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                self.check(f"{self.rel(dashboard_path)} parses", False, str(err))
                continue
            used = set(re.findall(r'"uid":\s*"([^"]*)"',
                                  json.dumps([p.get("datasource") for p in _walk(dashboard)] +
                                             [t.get("datasource") for p in _walk(dashboard)
                                              for t in p.get("targets") or [] if isinstance(t, dict)])))
            self.check(f"{self.rel(dashboard_path)} uses only provisioned datasources",
                       used <= uids, f"uses {sorted(used)}, provisioned {sorted(u for u in uids if u)}")


# --------------------------------------------------------------------------
# nginx configuration (just enough to read docker/nginx.conf)
# --------------------------------------------------------------------------

def parse_nginx(source: str) -> list:
    """Parse nginx.conf into [(directive, [args], [children])]; children is [] for simple
    directives. Handles comments, quotes and blocks; no includes or variables expansion."""
    tokens: list[str] = []
    i = 0
    while i < len(source):
        char = source[i]
        if char.isspace():
            i += 1
        elif char == "#":
            while i < len(source) and source[i] != "\n":
                i += 1
        elif char in "{};":
            tokens.append(char)
            i += 1
        elif char in "\"'":
            end = i + 1
            while end < len(source) and source[end] != char:
                end += 2 if source[end] == "\\" else 1
            if end >= len(source):
                raise ValueError("unterminated string")
            tokens.append(source[i + 1:end])
            i = end + 1
        else:
            start = i
            while i < len(source) and not source[i].isspace() and source[i] not in "{};":
                i += 1
            tokens.append(source[start:i])

    pos = 0

    def block(top: bool) -> list:
        nonlocal pos
        result = []
        words: list[str] = []
        while pos < len(tokens):
            token = tokens[pos]
            pos += 1
            if token == ";":
                if not words:
                    raise ValueError("empty directive")
                result.append((words[0], words[1:], []))
                words = []
            elif token == "{":
                if not words:
                    raise ValueError("block without a name")
                result.append((words[0], words[1:], block(False)))
                words = []
            elif token == "}":
                if top:
                    raise ValueError("unbalanced '}'")
                if words:
                    raise ValueError(f"directive {words[0]!r} without ';'")
                return result
            else:
                words.append(token)
        if words:
            raise ValueError(f"directive {words[0]!r} without ';'")
        if not top:
            raise ValueError("unclosed '{'")
        return result

    return block(True)


def _nginx_walk(directives: list):
    for directive in directives:
        yield directive
        yield from _nginx_walk(directive[2])


def nginx_seconds(value: str) -> float | None:
    """nginx time ('60', '90s', '1h', '1h30m') in seconds; None when unreadable."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000,
             "y": 31536000}
    if re.fullmatch(r"\d+", value):
        return float(value)
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|M|y)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(int(n) * units[u] for n, u in parts)


def _walk(container: dict):
    for panel in container.get("panels") or []:
        if isinstance(panel, dict):
            yield panel
            yield from _walk(panel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate the Docker setup without a Docker engine.")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root (default: this script's parent directory)")
    parser.add_argument("--no-yaml", action="store_true",
                        help="ignore PyYAML and use the built-in YAML subset parser")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list passing checks")
    args = parser.parse_args(argv)
    return Checker(args.root.resolve(), not args.no_yaml, args.verbose).run()


if __name__ == "__main__":
    sys.exit(main())
