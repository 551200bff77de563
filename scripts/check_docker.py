#!/usr/bin/env python3
"""Validate the container setup without a Docker engine.

    check_docker.py [--root REPO] [--no-yaml] [-v]

Checks docker/compose.yml, docker/prometheus.yml, docker/Dockerfile and the
Grafana provisioning under dashboards/:

  * compose.yml parses, has no obsolete `version:` key and defines the kafka,
    sluice, prometheus and grafana services;
  * kafka is a single-node KRaft broker whose advertised listener matches the
    brokers Sluice is given, with a health check Sluice waits for;
  * sluice's environment keys all start with SLUICE__ (or are RUST_LOG), its
    build context and Dockerfile exist;
  * every host path mounted in compose exists in the repository and every
    named volume is declared;
  * prometheus.yml parses and scrapes sluice:8080 on /metrics;
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

REQUIRED_SERVICES = ("kafka", "sluice", "prometheus", "grafana")
SLUICE_SCRAPE_TARGET = "sluice:8080"
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

        kafka = services.get("kafka") if isinstance(services.get("kafka"), dict) else {}
        sluice = services.get("sluice") if isinstance(services.get("sluice"), dict) else {}
        prometheus = services.get("prometheus") if isinstance(services.get("prometheus"), dict) else {}
        grafana = services.get("grafana") if isinstance(services.get("grafana"), dict) else {}

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
            brokers = self.env_map(sluice.get("environment")).get("SLUICE__KAFKA__BROKERS", "")
            advertised_hosts = {part.split("://", 1)[-1] for part in advertised.split(",") if part}
            self.check("SLUICE__KAFKA__BROKERS is an advertised kafka listener",
                       bool(brokers) and all(b in advertised_hosts for b in brokers.split(",")),
                       f"brokers {brokers!r}, advertised {advertised!r}")

        # sluice
        if sluice:
            env = self.env_map(sluice.get("environment"))
            bad = [k for k in env if not (k.startswith("SLUICE__") or k == "RUST_LOG")]
            self.check("sluice environment keys start with SLUICE__ or are RUST_LOG",
                       not bad, f"unexpected keys {bad}")
            for key in ("SLUICE__HTTP__LISTEN", "SLUICE__KAFKA__BROKERS", "SLUICE__STORE__PATH"):
                self.check(f"sluice sets {key}", bool(env.get(key)))
            store = env.get("SLUICE__STORE__PATH", "")
            mounted = [self.mount_target(v) for v in sluice.get("volumes") or []]
            self.check("sluice store path lies on a mounted volume",
                       any(t and (store == t or store.startswith(t.rstrip("/") + "/")) for t in mounted),
                       f"store {store!r}, mounts {mounted}")
            depends = sluice.get("depends_on")
            condition = depends.get("kafka", {}).get("condition") if isinstance(depends, dict) \
                and isinstance(depends.get("kafka"), dict) else None
            self.check("sluice waits for kafka to be healthy", condition == "service_healthy",
                       f"depends_on {depends!r}")
            listen_port = env.get("SLUICE__HTTP__LISTEN", "").rpartition(":")[2]
            ports = [str(p) for p in sluice.get("ports") or []]
            self.check("sluice publishes its listen port",
                       any(p.rpartition(":")[2].split("/")[0] == listen_port for p in ports),
                       f"listen port {listen_port!r}, ports {ports}")
            build = sluice.get("build")
            if self.check("sluice has a build section", isinstance(build, dict), repr(build)):
                context = (compose_dir / str(build.get("context", "."))).resolve()
                self.check("sluice build context is the repository root",
                           context == self.root.resolve(), self.rel(context))
                dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
                self.check("sluice Dockerfile exists", dockerfile.is_file(), self.rel(dockerfile))

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
        found = None
        for job in jobs:
            if not isinstance(job, dict):
                continue
            for static in job.get("static_configs") or []:
                if isinstance(static, dict) and SLUICE_SCRAPE_TARGET in (static.get("targets") or []):
                    found = job
        if not self.check(f"prometheus.yml scrapes {SLUICE_SCRAPE_TARGET}", found is not None):
            return
        self.check("prometheus sluice job uses /metrics",
                   found.get("metrics_path", "/metrics") == "/metrics", str(found.get("metrics_path")))
        interval = found.get("scrape_interval") or (config.get("global") or {}).get("scrape_interval")
        self.check("prometheus scrapes sluice every 5s", interval == "5s", str(interval))

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
