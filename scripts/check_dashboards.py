#!/usr/bin/env python3
"""Check Grafana dashboards against a live Prometheus, or offline.

Live check: every target expression of every panel (rows' nested panels
included) is evaluated as an instant query through Prometheus's HTTP API
(/api/v1/query). An expression fails when Prometheus rejects it or when it
returns no series.

    check_dashboards.py --prometheus http://127.0.0.1:9090 dashboards/sluice.json
    check_dashboards.py --prometheus http://127.0.0.1:9090 --wait 60 dashboards/*.json

--wait N retries for up to N seconds until every expression returns data;
rate() needs at least two scrapes, so a freshly started stack needs a while.

Offline check (no Prometheus needed):

    check_dashboards.py --self-test dashboards/sluice.json

validates the dashboard structure: unique panel ids, a fixed datasource and at
least one target per panel, non-empty expressions that reference a sluice_*
metric, balanced brackets and quotes in each expression.

Exit status: 0 when every check passed, 1 when any failed, 2 on bad usage or
unreadable input. Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

METRIC_PREFIX = "sluice_"
EXPECTED_DATASOURCE_UID = "prometheus"
SLUICE_METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])" + METRIC_PREFIX + r"[A-Za-z0-9_:]*")


@dataclass
class Target:
    dashboard: str
    panel_id: Any
    panel_title: str
    ref_id: str
    expr: str

    def label(self) -> str:
        return f"{self.dashboard}: panel {self.panel_id} {self.panel_title!r} target {self.ref_id}"


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def ok(self) -> None:
        self.passed += 1

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def report(self) -> int:
        for message in self.failures:
            print(f"FAIL {message}")
        print(f"{self.passed} passed, {len(self.failures)} failed")
        return 1 if self.failures else 0


# --------------------------------------------------------------------------
# Dashboard walking
# --------------------------------------------------------------------------

def load_dashboard(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    # Accept the HTTP API's export shape {"dashboard": {...}, "meta": {...}} too.
    if "panels" not in data and isinstance(data.get("dashboard"), dict):
        data = data["dashboard"]
    return data


def walk_panels(container: dict) -> Iterator[dict]:
    """Yield every panel, rows included, descending into nested `panels`
    (collapsed rows keep their panels there) and legacy `rows`."""
    for panel in container.get("panels") or []:
        if not isinstance(panel, dict):
            continue
        yield panel
        yield from walk_panels(panel)
    for legacy_row in container.get("rows") or []:
        if isinstance(legacy_row, dict):
            yield from walk_panels(legacy_row)


def is_row(panel: dict) -> bool:
    return panel.get("type") == "row"


def collect_targets(name: str, dashboard: dict) -> list[Target]:
    targets = []
    for panel in walk_panels(dashboard):
        if is_row(panel):
            continue
        for index, target in enumerate(panel.get("targets") or []):
            if not isinstance(target, dict):
                continue
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                continue
            targets.append(Target(
                dashboard=name,
                panel_id=panel.get("id"),
                panel_title=str(panel.get("title", "")),
                ref_id=str(target.get("refId") or index),
                expr=expr.strip(),
            ))
    return targets


# --------------------------------------------------------------------------
# Offline self-test
# --------------------------------------------------------------------------

def bracket_problem(expr: str) -> str | None:
    """Return a description of unbalanced brackets or quotes, or None."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for char in expr:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack[-1] != pairs[char]:
                return f"unbalanced {char!r}"
            stack.pop()
    if quote:
        return f"unterminated {quote} string"
    if stack:
        return f"unclosed {stack[-1]!r}"
    return None


def datasource_problem(datasource: Any) -> str | None:
    if datasource is None:
        return "no datasource"
    if isinstance(datasource, str):
        return f"datasource given by name {datasource!r}, expected {{'type': 'prometheus', 'uid': '{EXPECTED_DATASOURCE_UID}'}}"
    if not isinstance(datasource, dict):
        return f"datasource is {type(datasource).__name__}, expected an object"
    uid = datasource.get("uid")
    if not isinstance(uid, str) or not uid:
        return "datasource has no uid"
    if "$" in uid:
        return f"datasource uid {uid!r} is a variable, expected the fixed uid {EXPECTED_DATASOURCE_UID!r}"
    if datasource.get("type") != "prometheus":
        return f"datasource type {datasource.get('type')!r}, expected 'prometheus'"
    if uid != EXPECTED_DATASOURCE_UID:
        return f"datasource uid {uid!r}, expected {EXPECTED_DATASOURCE_UID!r}"
    return None


def self_test(name: str, dashboard: dict, results: Results) -> None:
    problems = []
    for key in ("uid", "title"):
        if not isinstance(dashboard.get(key), str) or not dashboard.get(key):
            problems.append(f"missing {key}")
    if not isinstance(dashboard.get("schemaVersion"), int):
        problems.append("missing integer schemaVersion")
    if not isinstance(dashboard.get("panels"), list) or not dashboard["panels"]:
        problems.append("no panels")
    text = json.dumps(dashboard)
    for marker in ("${DS", "__PROM_RANGE__", "__inputs"):
        if marker in text:
            problems.append(f"contains {marker!r}; use the fixed datasource and plain ranges")
    if problems:
        results.fail(f"{name}: dashboard: " + "; ".join(problems))
    else:
        results.ok()

    seen_ids: dict[Any, str] = {}
    for panel in walk_panels(dashboard):
        title = str(panel.get("title", ""))
        where = f"{name}: panel {panel.get('id')} {title!r}"
        problems = []
        panel_id = panel.get("id")
        if not isinstance(panel_id, int) or isinstance(panel_id, bool):
            problems.append("id is not an integer")
        elif panel_id in seen_ids:
            problems.append(f"duplicate id (also {seen_ids[panel_id]!r})")
        else:
            seen_ids[panel_id] = title
        if not title:
            problems.append("no title")
        if not isinstance(panel.get("gridPos"), dict):
            problems.append("no gridPos")

        if is_row(panel):
            if problems:
                results.fail(f"{where}: " + "; ".join(problems))
            else:
                results.ok()
            continue

        problem = datasource_problem(panel.get("datasource"))
        if problem:
            problems.append(problem)
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append("no targets")
            targets = []
        ref_ids = [t.get("refId") for t in targets if isinstance(t, dict)]
        if len(ref_ids) != len(set(ref_ids)):
            problems.append(f"duplicate refIds {ref_ids}")
        if problems:
            results.fail(f"{where}: " + "; ".join(problems))
        else:
            results.ok()

        for index, target in enumerate(targets):
            twhere = f"{where} target {target.get('refId', index) if isinstance(target, dict) else index}"
            if not isinstance(target, dict):
                results.fail(f"{twhere}: target is not an object")
                continue
            tproblems = []
            if not target.get("refId"):
                tproblems.append("no refId")
            if "datasource" in target:
                problem = datasource_problem(target["datasource"])
                if problem:
                    tproblems.append(problem)
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                tproblems.append("empty expr")
            else:
                if not SLUICE_METRIC_RE.search(expr):
                    tproblems.append(f"expr references no {METRIC_PREFIX}* metric: {expr}")
                problem = bracket_problem(expr)
                if problem:
                    tproblems.append(f"{problem} in expr: {expr}")
            if tproblems:
                results.fail(f"{twhere}: " + "; ".join(tproblems))
            else:
                results.ok()


# --------------------------------------------------------------------------
# Live check against Prometheus
# --------------------------------------------------------------------------

def instant_query(base_url: str, expr: str, timeout: float) -> tuple[bool, str]:
    """Evaluate expr; return (has_data, detail)."""
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        # Prometheus answers 400/422 with a JSON error body for bad queries.
        try:
            payload = json.loads(err.read())
            return False, f"{payload.get('errorType', 'error')}: {payload.get('error', err.reason)}"
        except (ValueError, OSError):
            return False, f"HTTP {err.code} {err.reason}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return False, f"cannot reach Prometheus: {reason}"
    try:
        payload = json.loads(body)
    except ValueError:
        return False, "response is not JSON"
    if payload.get("status") != "success":
        return False, f"{payload.get('errorType', 'error')}: {payload.get('error', 'query failed')}"
    data = payload.get("data") or {}
    result_type = data.get("resultType")
    result = data.get("result")
    if result_type in ("vector", "matrix"):
        if not result:
            return False, "no series"
        return True, f"{len(result)} series"
    if result_type in ("scalar", "string"):
        return True, result_type
    return False, f"unexpected resultType {result_type!r}"


def live_check(prometheus: str, targets: list[Target], wait: float, timeout: float,
               verbose: bool) -> Results:
    exprs = sorted({t.expr for t in targets})
    deadline = time.monotonic() + max(wait, 0)
    attempt = 0
    while True:
        attempt += 1
        outcome = {expr: instant_query(prometheus, expr, timeout) for expr in exprs}
        missing = [expr for expr, (ok, _) in outcome.items() if not ok]
        remaining = deadline - time.monotonic()
        if not missing or remaining <= 0:
            break
        print(f"attempt {attempt}: {len(missing)} of {len(exprs)} expressions without data; "
              f"retrying for up to {int(remaining)}s more", file=sys.stderr)
        time.sleep(min(5.0, max(remaining, 0.5)))

    results = Results()
    for target in targets:
        ok, detail = outcome[target.expr]
        if ok:
            results.ok()
            if verbose:
                print(f"ok   {target.label()}: {target.expr} ({detail})")
        else:
            results.fail(f"{target.label()}: {target.expr} -- {detail}")
    return results


# --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Evaluate every Grafana panel expression against Prometheus, "
                    "or validate dashboards offline with --self-test.")
    parser.add_argument("dashboards", nargs="+", type=Path, help="dashboard JSON files")
    parser.add_argument("--prometheus", metavar="URL",
                        help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--wait", type=float, default=0, metavar="N",
                        help="retry for up to N seconds until every expression returns data")
    parser.add_argument("--timeout", type=float, default=10, metavar="S",
                        help="per-request timeout in seconds (default 10)")
    parser.add_argument("--self-test", action="store_true",
                        help="validate the dashboard structure offline")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list passing targets")
    args = parser.parse_args(argv)

    if not args.self_test and not args.prometheus:
        parser.error("give --prometheus URL, or --self-test for the offline check")

    dashboards = []
    for path in args.dashboards:
        try:
            dashboards.append((str(path), load_dashboard(path)))
        except (OSError, ValueError) as err:
            print(f"error: cannot read dashboard {path}: {err}", file=sys.stderr)
            return 2

    status = 0
    if args.self_test:
        results = Results()
        for name, dashboard in dashboards:
            self_test(name, dashboard, results)
        print("self-test (offline):")
        status = max(status, results.report())

    if args.prometheus:
        targets = [t for name, dashboard in dashboards for t in collect_targets(name, dashboard)]
        if not targets:
            print("error: no panel targets with an expr found", file=sys.stderr)
            return 1
        print(f"live check against {args.prometheus}:")
        results = live_check(args.prometheus, targets, args.wait, args.timeout, args.verbose)
        status = max(status, results.report())
    return status


if __name__ == "__main__":
    sys.exit(main())
