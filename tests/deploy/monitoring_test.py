#!/usr/bin/python3
"""Static checks of deploy/prometheus/alerts.yml and deploy/grafana/atomq.json.

  monitoring_test.py    promtool check rules; promtool test rules on
                        tests/deploy/alerts_test.yml, which must show every
                        alert both firing and silent; the alerts' labels and
                        annotations; the dashboard's structure, variables and
                        panels, and every panel expression parsed by promtool

metrics_test.py checks the metric names they use against the servers' scrapes
(it imports dashboard_exprs and alert_rules from here).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
ALERTS = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
ALERTS_TEST = os.path.join(HERE, "alerts_test.yml")
DASHBOARD = os.path.join(ROOT, "deploy/grafana/atomq.json")

# What issue 15 item 2 asks the alerts to cover.
REQUIRED_ALERTS = {"AtomqTransactionInDoubt", "AtomqParticipantDown", "AtomqFsyncSlow",
                   "AtomqDiskNearlyFull", "AtomqWriteFailures", "AtomqNoLeader"}
SEVERITIES = {"critical", "warning", "info"}
# Names the panels must use between them (the panels the issue lists).
REQUIRED_IN_DASHBOARD = [
    "atomq_execute_replies_total", "atomq_execute_seconds_bucket", "atomq_transactions_in_flight",
    "atomq_transactions_in_doubt", "atomq_transactions_in_doubt_oldest_seconds",
    "atomq_queue_ready_messages", "atomq_queue_leased_messages",
    "atomq_queue_pending_in_txn_messages", "atomq_storage_fsyncs_total",
    "atomq_storage_fsync_seconds_bucket", "atomq_storage_batches_total",
    "atomq_data_dir_available_bytes", "atomq_replica_role", "atomq_replica_leader",
    "atomq_replica_term", "atomq_replica_commit_index", "process_cpu_seconds_total",
    "process_resident_memory_bytes"]


def alert_rules():
    """[rule] of every group of alerts.yml."""
    doc = yaml.safe_load(open(ALERTS))
    return [r for g in doc.get("groups", []) for r in g.get("rules", [])]


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))  # a collapsed row holds its panels


def dashboard():
    return json.load(open(DASHBOARD))


def dashboard_exprs(dash=None):
    """[(where, PromQL)] of every panel target, and the metric inside each
    label_values() variable query."""
    dash = dash or dashboard()
    out = []
    for p in walk_panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q)
        if v.get("type") == "query" and m:
            out.append((f"variable {v.get('name')}", m.group(1)))
    return out


def grafana_to_promql(expr):
    """The expression with Grafana's variables replaced by what they would be
    with "All" selected, so that Prometheus can parse or run it."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def check_alerts():
    r = subprocess.run(["promtool", "check", "rules", ALERTS], capture_output=True, text=True)
    check(r.returncode == 0, f"promtool check rules {ALERTS}: {r.stdout}{r.stderr}")
    r = subprocess.run(["promtool", "test", "rules", ALERTS_TEST], capture_output=True, text=True)
    check(r.returncode == 0 and "SUCCESS" in r.stdout,
          f"promtool test rules {ALERTS_TEST}:\n{r.stdout}{r.stderr}")

    rules = alert_rules()
    names = [r.get("alert") for r in rules if "alert" in r]
    check(len(names) == len(set(names)), f"an alert is defined twice: {names}")
    for missing in sorted(REQUIRED_ALERTS - set(names)):
        check(False, f"alerts.yml has no {missing}")
    for r in rules:
        name = r.get("alert")
        check(name is not None, f"a rule that is not an alert: {r}")
        check(bool(str(r.get("expr", "")).strip()), f"{name}: no expr")
        check(r.get("labels", {}).get("severity") in SEVERITIES,
              f"{name}: severity label {r.get('labels', {}).get('severity')!r} not one of {SEVERITIES}")
        for a in ("summary", "description"):
            check(bool(str(r.get("annotations", {}).get(a, "")).strip()), f"{name}: no {a} annotation")
    fors = {r.get("alert"): r.get("for") for r in rules}
    check(fors.get("AtomqTransactionInDoubt") == "1m", "AtomqTransactionInDoubt: not `for: 1m`")
    check(fors.get("AtomqParticipantDown") == "1m", "AtomqParticipantDown: not `for: 1m`")

    # Every alert is shown both firing and silent; a test naming an alert
    # that does not exist would pass with exp_alerts: [] whatever happens.
    tests = yaml.safe_load(open(ALERTS_TEST))
    check(any(os.path.normpath(os.path.join(HERE, f)) == ALERTS for f in tests.get("rule_files", [])),
          f"{ALERTS_TEST} does not load {ALERTS}")
    fires, silent = set(), set()
    for t in tests.get("tests", []):
        for a in t.get("alert_rule_test", []):
            n = a.get("alertname")
            check(n in names, f"alerts_test.yml tests {n!r}, which alerts.yml does not define")
            (fires if a.get("exp_alerts") else silent).add(n)
    for n in names:
        check(n in fires, f"alerts_test.yml never shows {n} firing")
        check(n in silent, f"alerts_test.yml never shows {n} silent")


def overlaps(a, b):
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and
            a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def check_dashboard():
    try:
        dash = dashboard()
    except ValueError as e:
        check(False, f"{DASHBOARD} is not JSON: {e}")
        return
    check(36 <= dash.get("schemaVersion", 0) <= 39, f"schemaVersion {dash.get('schemaVersion')}")
    check(bool(dash.get("title")) and bool(dash.get("uid")), "dashboard without title or uid")

    # The data source is chosen at import (or later) through a variable.
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = [n for n, v in variables.items() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    inputs = [i["name"] for i in dash.get("__inputs", []) if i.get("pluginId") == "prometheus"]
    check(bool(ds or inputs), "no Prometheus data source variable or __inputs entry")
    ds_refs = {f"${{{n}}}" for n in ds + inputs} | {f"${n}" for n in ds + inputs}
    for n in ("job", "instance"):
        v = variables.get(n, {})
        check(v.get("type") == "query", f"no query variable {n}")
        check(v.get("datasource", {}).get("uid") in ds_refs, f"variable {n} does not use the data source variable")

    panels = list(walk_panels(dash.get("panels", [])))
    ids = [p.get("id") for p in panels]
    check(len(ids) == len(set(ids)) and None not in ids, f"panel ids missing or repeated: {ids}")
    boxes = []
    for p in panels:
        title = p.get("title")
        g = p.get("gridPos", {})
        check(all(isinstance(g.get(k), int) for k in "hwxy") and g.get("x", 0) + g.get("w", 0) <= 24,
              f"panel {title!r}: gridPos {g}")
        for other, og in boxes:
            check(not overlaps(g, og), f"panel {title!r} overlaps {other!r}")
        boxes.append((title, g))
        if p.get("type") == "row":
            continue
        check(bool(title), f"panel {p.get('id')} has no title")
        check(p.get("datasource", {}).get("uid") in ds_refs, f"panel {title!r}: data source not the variable")
        targets = p.get("targets", [])
        check(bool(targets), f"panel {title!r} has no query")
        refs = [t.get("refId") for t in targets]
        check(len(refs) == len(set(refs)) and None not in refs, f"panel {title!r}: refIds {refs}")
        for t in targets:
            e = t.get("expr", "")
            check(bool(e.strip()), f"panel {title!r} {t.get('refId')}: empty expr")
            # Every selector honours the job and instance variables.
            sels = re.findall(r"\{([^}]*)\}", e)
            check(bool(sels) and all('job=~"$job"' in s and 'instance=~"$instance"' in s for s in sels),
                  f"panel {title!r} {t.get('refId')}: a selector without the $job/$instance filters: {e}")

    exprs = dashboard_exprs(dash)
    used = " ".join(e for _, e in exprs)
    for name in REQUIRED_IN_DASHBOARD:
        check(re.search(rf"\b{name}\b", used) is not None, f"no panel uses {name}")
    def quantile_of(q, name):
        return any(re.search(rf"histogram_quantile\({re.escape(q)},.*\b{name}\b", e) for _, e in exprs)
    for q in ("0.5", "0.99"):
        check(quantile_of(q, "atomq_execute_seconds_bucket"), f"no Execute latency p{q[2:]} panel")
    check(quantile_of("0.99", "atomq_storage_fsync_seconds_bucket"), "no fsync latency p99 panel")

    # promtool parses each expression: as recording rules of a scratch file.
    tmp = tempfile.mkdtemp(prefix="atomq-dash-")
    try:
        path = os.path.join(tmp, "panels.yml")
        rules = [{"record": f"atomq:panel{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]
        yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}, open(path, "w"))
        r = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
        bad = r.stdout + r.stderr
        # Name the panel of each rule promtool refuses.
        for m in re.finditer(r"atomq:panel(\d+)", bad):
            bad += f"\n  atomq:panel{m.group(1)} is {exprs[int(m.group(1))][0]}"
        check(r.returncode == 0, f"promtool refuses a dashboard expression:\n{bad}")
    finally:
        shutil.rmtree(tmp)


def main():
    if not shutil.which("promtool"):
        check(False, "promtool not found: deploy/local/install-deps.sh installs it (Debian's prometheus)")
        return report("monitoring")
    check_alerts()
    check_dashboard()
    return report("monitoring")


if __name__ == "__main__":
    sys.exit(main())
