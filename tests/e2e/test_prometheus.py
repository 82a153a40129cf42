"""pcns's alert rules and Grafana dashboard against a real Prometheus scraping a running pcns.

Prometheus (Debian ``prometheus``, which brings ``promtool``) runs on a free loopback port with
its own TSDB in the test's temporary directory, scrapes the in-process service every second and
evaluates ``deploy/prometheus/pcns-alerts.yml`` every second. Without the binaries the tests that
need them skip, unless ``PCNS_REQUIRE_TOOLS=1`` (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pcns.app import running_service
from tests.support import Client, ServiceFiles, eventually, free_port, wait_terminal

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "pcns-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "pcns-alerts.test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "pcns-dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/pcns/pcns/blob/main/docs/operations.md#"

# What Grafana would put in for its variables: every target, ranges a 1 s scrape fills.
GRAFANA_VALUES = {"target": ".*", "__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
# Panels that stay empty unless something rare happens (no integrity failure, no hold with
# --until in these scenarios); every other panel must show data once the scenario ran.
MAY_BE_EMPTY = {"Integrity failures per second, by target", "Announced end of holds"}
# The command target's exit code while "broken": EX_NOUSER, permanent by default.
EX_NOUSER = 67


def tool(name: str) -> str:
    """The path of ``name``; skip without it, or fail when ``PCNS_REQUIRE_TOOLS=1`` (CI)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian package prometheus)"
        if os.environ.get("PCNS_REQUIRE_TOOLS") == "1":
            pytest.fail(f"PCNS_REQUIRE_TOOLS=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), flags=re.MULTILINE)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of ``markdown``."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def grafana_substitute(expr: str) -> str:
    """``expr`` with ``$name`` and ``${name}`` replaced as Grafana would (KeyError: unknown)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: GRAFANA_VALUES[m[1] or m[2]], expr)


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_panels(panels: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every panel that queries (rows' nested panels included)."""
    found = []
    for panel in dashboard()["panels"] if panels is None else panels:
        found += dashboard_panels(panel.get("panels", []))
        if panel.get("targets"):
            found.append(panel)
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title or variable, PromQL) for every panel query and every query variable."""
    queries = [
        (panel["title"], grafana_substitute(t["expr"]))
        for panel in dashboard_panels()
        for t in panel["targets"]
    ]
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        # Grafana's label_values(metric, label) asks for the label's values on metric's series.
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
        assert m is not None, f"variable {var['name']}: unexpected query {text!r}"
        queries.append((f"variable {var['name']}", f"count by ({m[2]}) ({m[1]})"))
    return queries


@dataclass
class Prometheus:
    """The HTTP API of a running Prometheus."""

    url: str
    session: aiohttp.ClientSession

    async def api(self, path: str, **params: str) -> dict[str, Any]:
        async with self.session.get(self.url + path, params=params) as resp:
            doc: dict[str, Any] = await resp.json(content_type=None)
            return doc

    async def try_query(self, expr: str) -> dict[str, Any]:
        """The whole answer of an instant query: ``status`` and ``data`` or ``error``."""
        return await self.api("/api/v1/query", query=expr)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        doc = await self.try_query(expr)
        assert doc["status"] == "success", f"{expr}: {doc.get('error')}"
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    async def firing(self, alertname: str) -> list[dict[str, str]]:
        """Label sets of ``alertname``'s firing alerts."""
        found = await self.query(f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')
        return [series["metric"] for series in found]

    async def alerting_rules(self) -> list[dict[str, Any]]:
        doc = await self.api("/api/v1/rules", type="alert")
        assert doc["status"] == "success", doc
        return [rule for group in doc["data"]["groups"] for rule in group["rules"]]


def write_prometheus_config(root: Path, scrape: str) -> Path:
    """A Prometheus configuration under ``root`` that scrapes ``scrape`` (host:port) every
    second and evaluates the pcns alert rules every second."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(
        json.dumps(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": "pcns", "static_configs": [{"targets": [scrape]}]}],
            }
        )
    )
    return config


@asynccontextmanager
async def running_prometheus(root: Path, scrape: str) -> AsyncIterator[Prometheus]:
    """Prometheus on a free loopback port, with its own TSDB under ``root``, scraping ``scrape``
    (see :func:`write_prometheus_config`); stopped (SIGTERM) when the block ends."""
    binary = tool("prometheus")
    config = write_prometheus_config(root, scrape)
    port = free_port()
    log = root / "prometheus.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as session:
            prometheus = Prometheus(f"http://127.0.0.1:{port}", session)

            async def ready() -> bool:
                if proc.returncode is not None:
                    pytest.fail(f"prometheus exited {proc.returncode}:\n{log.read_text()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(prometheus.url + "/-/ready") as resp:
                        return resp.status == 200
                return False

            await eventually(ready, timeout=30)
            yield prometheus
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def scraped(prometheus: Prometheus, expr: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Poll until ``expr`` returns series (what pcns exported has been scraped)."""

    async def probe() -> list[dict[str, Any]]:
        return await prometheus.query(expr)

    found: list[dict[str, Any]] = await eventually(probe, timeout=timeout, interval=0.5)
    return found


async def rules_evaluated(prometheus: Prometheus) -> list[dict[str, Any]]:
    """Poll until every alerting rule has been evaluated without error; the rules."""

    async def probe() -> list[dict[str, Any]] | None:
        rules = await prometheus.alerting_rules()
        if rules and all(rule["health"] == "ok" for rule in rules):
            return rules
        return None

    try:
        rules: list[dict[str, Any]] = await eventually(probe, timeout=30, interval=0.5)
    except AssertionError:
        bad = [
            (r["name"], r["health"], r.get("lastError")) for r in await prometheus.alerting_rules()
        ]
        raise AssertionError(f"rules not evaluated cleanly: {bad}") from None
    return rules


def command_target(root: Path) -> tuple[dict[str, Any], Path]:
    """A ``command`` target standing in for an application that refuses every password
    (exit 67, permanent) while the returned marker file exists."""
    broken = root / "app-is-broken"
    script = root / "set-app-password"
    script.write_text(
        "#!/bin/sh\n"
        'if [ -e "$BROKEN" ]; then\n'
        '    echo "application refused the change" >&2\n'
        f"    exit {EX_NOUSER}\n"
        "fi\n"
        "cat >/dev/null\n"
    )
    script.chmod(0o755)
    target = {
        "name": "app",
        "type": "command",
        "argv": [str(script), "{account}"],
        "env": {"BROKEN": str(broken)},
        "timeout": 10,
    }
    return target, broken


async def send_unsigned(client: Client) -> None:
    """One request with a wrong signature, so the rejections panel has a series."""
    body = b'{"user": "mallory", "password": "Not-Signed-1"}'
    headers = client.signed_headers(body)
    headers["webhook-signature"] = "v1,AAAA"
    status, _, _ = await client.post_raw(body, headers)
    assert status == 401


async def retry_parked(files: ServiceFiles, target: str) -> None:
    """Send the parked deliveries of ``target`` back to the queue as an operator does, with
    `pcns deliveries retry --target T --yes` (the installed executable)."""
    pcns = Path(sys.executable).with_name("pcns")
    argv = [str(pcns), "deliveries", "retry", "--target", target, "--yes"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*argv, "--config", str(files.write_config())],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("retried "), done.stdout


def test_runbook_urls_point_at_headings_of_the_operations_guide() -> None:
    """Every alert links its own `### Alert: NAME` section of docs/operations.md, which exists."""
    names = alert_names()
    assert names, "no alerts found in pcns-alerts.yml"
    urls = re.findall(r"runbook_url: (\S+)", RULES.read_text())
    assert len(urls) == len(names)
    anchors = heading_anchors(OPERATIONS.read_text())
    for name, url in zip(names, urls, strict=True):
        assert url == RUNBOOK_BASE + f"alert-{name.lower()}", (name, url)
        assert f"alert-{name.lower()}" in anchors, f"docs/operations.md lacks '### Alert: {name}'"
    for link in dashboard()["links"]:
        assert link["url"].removeprefix(RUNBOOK_BASE) in anchors, link


def test_dashboard_queries_go_through_its_variables() -> None:
    """Every dashboard panel queries the `${datasource}` variable's Prometheus, and every
    per-target query is filtered by the `target` variable."""
    doc = dashboard()
    assert 36 <= doc["schemaVersion"] <= 41
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["target"]["type"] == "query"
    assert variables["target"]["includeAll"] is True
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for t in panel["targets"]:
            if "by (target" in t["expr"]:
                assert 'target=~"$target"' in t["expr"], (panel["title"], t["expr"])


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    """`promtool` accepts the rules and the example config, and the rules' unit tests, which
    cover every alert, pass."""
    promtool = tool("promtool")
    for args in (
        ["check", "rules", RULES.name],
        ["test", "rules", RULE_TESTS.name],
        ["check", "config", EXAMPLE_CONFIG.name],
    ):
        done = subprocess.run(
            [promtool, *args],
            cwd=PROMETHEUS_DIR,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(alert_names())


async def test_every_alert_and_panel_query_is_valid_and_a_healthy_pcns_fires_nothing(
    tmp_path: Path, db_url: str
) -> None:
    """Prometheus loads every pcns alert and evaluates it without error against a live pcns,
    every dashboard query is valid PromQL there, and a pcns that delivers fine fires no alert."""
    target, _ = command_target(tmp_path)
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[target, {"name": "ok", "type": "noop"}])
    async with (
        running_service(files.settings()),
        aiohttp.ClientSession() as session,
        running_prometheus(tmp_path / "prometheus", f"127.0.0.1:{files.port}") as prometheus,
    ):
        client = Client(files, session)
        for user in ("alice", "bob", "carol"):
            status, body = await client.send(user, f"Qz7-{user}-Vx9")
            assert status == 202, body
            assert await wait_terminal(client, body["id"]) == {
                "app": "delivered",
                "ok": "delivered",
            }
        await send_unsigned(client)
        await scraped(prometheus, 'sum(pcns_deliveries_delivered_total{target="app"}) >= 3')

        rules = await rules_evaluated(prometheus)
        assert sorted(r["name"] for r in rules) == sorted(alert_names())
        for rule in rules:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["name"]
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])

        invalid = []
        for title, expr in dashboard_queries():
            answer = await prometheus.try_query(expr)
            if answer["status"] != "success":
                invalid.append((title, expr, answer.get("error")))
        assert invalid == []

        async def alerts_quiet() -> bool:
            for rule in rules:
                if await prometheus.query(rule["query"]):
                    return False
            return True

        with contextlib.suppress(AssertionError):
            await eventually(alerts_quiet, timeout=20, interval=0.5)
        loud = {r["name"]: await prometheus.query(r["query"]) for r in rules}
        assert {name: found for name, found in loud.items() if found} == {}


async def test_a_parked_delivery_fires_its_alert_until_it_is_retried(
    tmp_path: Path, db_url: str
) -> None:
    """A delivery the target refuses permanently is parked and fires PcnsDeliveriesParked (with
    every dashboard panel showing data) until the target is fixed and its parked deliveries are
    retried, which delivers the change and resolves the alert."""
    target, broken = command_target(tmp_path)
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        targets=[
            target,
            {"name": "ok", "type": "noop"},
            # The change below carries no upn: this delivery fails at intake.
            {"name": "by-upn", "type": "noop", "account": "{upn}"},
        ],
    )
    broken.touch()
    async with (
        running_service(files.settings()),
        aiohttp.ClientSession() as session,
        running_prometheus(tmp_path / "prometheus", f"127.0.0.1:{files.port}") as prometheus,
    ):
        client = Client(files, session)
        await scraped(prometheus, 'up{job="pcns"} == 1')
        status, body = await client.send("alice", "Qz7-Vx9-Kw3!")
        assert status == 202, body
        change_id = body["id"]
        states = await wait_terminal(client, change_id)
        assert states["ok"] == "delivered"
        assert states["by-upn"] == "failed"
        await send_unsigned(client)

        failed = await eventually(lambda: prometheus.firing("PcnsDeliveriesFailed"), timeout=30)
        assert {"target": "by-upn", "reason": "account_template"}.items() <= failed[0].items()

        async def empty_panels() -> list[str]:
            empty = []
            for panel in dashboard_panels():
                if panel["title"] in MAY_BE_EMPTY:
                    continue
                results = [
                    await prometheus.query(grafana_substitute(t["expr"])) for t in panel["targets"]
                ]
                if not any(results):
                    empty.append(panel["title"])
            return empty

        async def every_panel_shows_data() -> bool:
            return not await empty_panels()

        with contextlib.suppress(AssertionError):
            await eventually(every_panel_shows_data, timeout=30, interval=1)
        empty = await empty_panels()
        assert not empty, f"dashboard panels without data: {empty}"

        # The refused delivery keeps its ciphertext, parked, until an operator retries it.
        assert states["app"] == "parked"
        parked = await eventually(lambda: prometheus.firing("PcnsDeliveriesParked"), timeout=30)
        assert parked[0]["target"] == "app"
        assert await prometheus.query(
            'sum by (reason) (pcns_deliveries_parked_total{target="app", reason="permanent"})'
        )

        broken.unlink()
        await retry_parked(files, "app")

        async def app_delivered() -> bool:
            doc = await client.status(change_id)
            now: dict[str, str] = {d["target"]: d["state"] for d in doc["deliveries"]}
            return now["app"] == "delivered"

        await eventually(app_delivered)

        async def parked_alert_resolved() -> bool:
            return not await prometheus.firing("PcnsDeliveriesParked")

        await eventually(parked_alert_resolved, timeout=30, interval=0.5)
        assert await prometheus.query(
            'max by (target) (pcns_queue_depth{target="app", state="parked"}) == 0'
        )
        assert await prometheus.query('pcns_target_last_success_timestamp_seconds{target="app"}')
