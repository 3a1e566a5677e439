#!/usr/bin/python3
"""The dashboard and the alerts against what the servers really serve.

  metrics_test.py BIN_DIR

Starts on loopback (plaintext, a temporary data dir) a participant p1, a
participant p2 run as a group of one member (so that atomq_replica_* are
served) and a coordinator c1 over both, each with --metrics_listen; creates
a queue on each and runs a committed and an aborted transaction with
atomqctl; scrapes the three /metrics and checks:
  - every metric name in every dashboard expression (and variable query)
    and every alert expression is a series the scrapes have;
  - Prometheus conventions on every atomq_ family: HELP and TYPE, counters
    and only counters ending in _total, base units (_seconds, _bytes), no
    camelCase, well-formed histograms; `promtool check metrics` on each
    scrape; every sample line parses;
  - bounded label cardinality: no label that names a transaction, lease or
    producer, no label value that looks like a transaction id or token;
  - a real Prometheus (Debian's, on loopback) scraping the three with the
    alert rules loaded: every target up, every rule evaluated without
    error, every dashboard expression answering data.
Every process it starts is stopped by pid at the end, also on failure.
"""
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, report  # noqa: E402
from monitoring_test import ALERTS, alert_rules, dashboard_exprs, grafana_to_promql  # noqa: E402

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# PromQL's functions and aggregation operators (Prometheus 2.42): an
# identifier followed by "(" must be one of them.
FUNCTIONS = set("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg
delta deriv exp floor histogram_count histogram_fraction histogram_quantile histogram_sum
holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10 log2
max_over_time min_over_time minute month pi predict_linear present_over_time quantile_over_time
rad rate resets round scalar sgn sin sinh sort sort_desc sqrt stddev_over_time stdvar_over_time
sum_over_time tan tanh time timestamp vector year
sum min max avg group stddev stdvar count count_values bottomk topk quantile
""".split())
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "Inf", "NaN", "atan2"}
# Names PromQL expressions may use that no atomq server serves.
NOT_SERVED = {"up"}
# Unit words Prometheus wants as base units instead.
NON_BASE_UNITS = {"ms", "msec", "millis", "milliseconds", "us", "usec", "micros", "microseconds",
                  "ns", "nanoseconds", "minutes", "hours", "days", "kb", "mb", "gb", "kib", "mib",
                  "gib", "kilobytes", "megabytes", "gigabytes", "percent"}
# Labels whose values would grow without bound.
UNBOUNDED_LABELS = {"txn", "txn_id", "transaction", "transaction_id", "id", "lease", "lease_token",
                    "token", "sequence", "producer", "producer_id", "message", "payload"}
TXN_LIKE = [re.compile(p) for p in (
    r"^[A-Za-z0-9_.]+-\d+-\d+$",                  # a coordinator's id: c1-1-7
    r"^py-",                                      # the Python client's
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-",     # a UUID
    r"^[0-9a-fA-F]{16,}$",                        # a lease token or any long hex
    r"^\d{6,}$")]                                 # a long number (a sequence)
SEVERAL_QUEUES = 10  # a family's series per queue bound: far above what one queue makes


def metric_names(expr):
    """(metric names, unknown functions) an expression uses: the identifiers
    left once strings, label matchers, ranges and label lists are removed,
    that are not followed by "(" and are not keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names, unknown = set(), set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call:
            if word not in FUNCTIONS:
                unknown.add(word)
        elif word not in KEYWORDS:
            names.add(word)
    return names, unknown


def self_test_metric_names():
    """The parser on expressions whose answer is known (a broken parser
    would find nothing and so pass everything)."""
    cases = {
        'sum by (le) (rate(a_bucket{job=~"$job"}[$__rate_interval]))': {"a_bucket"},
        'histogram_quantile(0.99, sum by (instance, le) (rate(b_seconds_bucket[5m]))) > 1e-3': {"b_seconds_bucket"},
        'x / y{q="z(w)"} unless on (group) count by (group) (r{role="leader"} == 1)': {"x", "y", "r"},
        'max by (g) (m * on (job, instance) group_left (group, member) n) offset 5m': {"m", "n"},
        'up{job=~".*participant.*"} == 0': {"up"},
    }
    for expr, want in cases.items():
        got, unknown = metric_names(expr)
        check(got == want and not unknown, f"metric_names({expr!r}) = {got}, {unknown}; want {want}")
    check(metric_names("frobnicate(a)")[1] == {"frobnicate"}, "an unknown function is not noticed")


# --- the exposition format --------------------------------------------------

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$")
LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\\n]|\\.)*)"\s*(,|$)')


def parse_labels(text):
    """{name: value}, or None if `text` is not a label list."""
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        if not m or m.end() == pos:
            return None
        if m.group(1) in labels:
            return None
        labels[m.group(1)] = m.group(2)
        pos = m.end()
    return labels


def parse_scrape(text, where):
    """{"help": {family: text}, "type": {family: type}, "samples": [(name,
    labels, value)]}; every line that does not parse is a failure."""
    out = {"help": {}, "type": {}, "samples": []}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            words = line.split(None, 3)
            if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                table = out[words[1].lower()]
                check(words[2] not in table, f"{where}:{n}: second {words[1]} for {words[2]}")
                table[words[2]] = words[3] if len(words) > 3 else ""
            continue
        m = SAMPLE.match(line)
        labels = parse_labels(m.group(3) or "") if m else None
        value_ok = False
        if m:
            try:
                float(m.group(4))
                value_ok = True
            except ValueError:
                pass
        if not check(m is not None and labels is not None and value_ok,
                     f"{where}:{n}: not a valid sample line: {line}"):
            # Still count the name, so that names are judged separately.
            name = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if name:
                out["samples"].append((name.group(0), {}, float("nan")))
            continue
        out["samples"].append((m.group(1), labels, float(m.group(4))))
    return out


def family_of(name, types):
    """The family a sample belongs to: its own name, or for a histogram's
    (or summary's) _bucket/_sum/_count the name without the suffix."""
    for s in HISTOGRAM_SUFFIXES:
        if name.endswith(s) and types.get(name[: -len(s)]) in ("histogram", "summary"):
            return name[: -len(s)]
    return name


def check_conventions(scrape, where, queues):
    types, helps = scrape["type"], scrape["help"]
    families = {}
    for name, labels, value in scrape["samples"]:
        families.setdefault(family_of(name, types), []).append((name, labels, value))
    for fam, samples in sorted(families.items()):
        check(fam in types, f"{where}: {fam} has no TYPE")
        check(bool(helps.get(fam, "").strip()), f"{where}: {fam} has no HELP")
        if not fam.startswith("atomq_"):
            continue
        t = types.get(fam)
        check(re.fullmatch(r"atomq_[a-z0-9]+(_[a-z0-9]+)*", fam) is not None,
              f"{where}: {fam} is not lower snake_case")
        check(t in ("counter", "gauge", "histogram"), f"{where}: {fam} has type {t}")
        check((t == "counter") == fam.endswith("_total"),
              f"{where}: {fam} is a {t}: counters, and only counters, end in _total")
        words = set(fam.split("_"))
        check(not words & NON_BASE_UNITS, f"{where}: {fam} is not in base units (seconds, bytes)")
        if fam.endswith("_info"):
            check(t == "gauge" and all(v == 1 for _, _, v in samples), f"{where}: {fam} is an info metric not 1")
        if t == "histogram":
            check(fam.endswith(("_seconds", "_bytes", "_messages")),
                  f"{where}: histogram {fam} names no unit")
            check_histogram(fam, samples, where)
        # Cardinality: label sets (le aside) of one family.
        sets = {tuple(sorted((k, v) for k, v in l.items() if k != "le")) for _, l, _ in samples}
        check(len(sets) <= SEVERAL_QUEUES * max(1, len(queues)),
              f"{where}: {fam} has {len(sets)} series")
        for _, labels, _ in samples:
            for k, v in labels.items():
                check(re.fullmatch(r"[a-z][a-z0-9_]*", k) is not None, f"{where}: {fam} label {k!r} not snake_case")
                check(k not in UNBOUNDED_LABELS, f"{where}: {fam} has an unbounded label {k}")
                check(not any(p.search(v) for p in TXN_LIKE),
                      f"{where}: {fam}{{{k}={v!r}}}: a value that looks like a transaction id or token")
                if k == "queue":
                    check(v in queues, f"{where}: {fam} labels queue {v!r}, which was never created")


def check_histogram(fam, samples, where):
    by_name = {}
    for name, labels, value in samples:
        by_name.setdefault(name, []).append((labels, value))
    buckets = by_name.get(fam + "_bucket", [])
    check(bool(buckets) and fam + "_sum" in by_name and fam + "_count" in by_name,
          f"{where}: histogram {fam} lacks _bucket, _sum or _count")
    if not buckets:
        return
    try:
        ordered = sorted(((float(l["le"]), v) for l, v in buckets if "le" in l))
    except ValueError:
        check(False, f"{where}: {fam} has a bucket bound that is not a number")
        return
    check(len(ordered) == len(buckets), f"{where}: {fam} has a bucket without le")
    check(ordered and ordered[-1][0] == float("inf"), f"{where}: {fam} has no +Inf bucket")
    check(all(a[1] <= b[1] for a, b in zip(ordered, ordered[1:])), f"{where}: {fam} buckets not cumulative")
    counts = by_name.get(fam + "_count", [])
    check(bool(counts) and ordered and counts[0][1] == ordered[-1][1],
          f"{where}: {fam}_count is not its +Inf bucket")


# --- the servers --------------------------------------------------------------

def free_port(taken):
    """A loopback port below the ephemeral range that nobody listens on (a
    bind without SO_REUSEPORT fails on a port a gRPC server holds)."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        if port in taken:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            taken.add(port)
            return port
        except OSError:
            pass
        finally:
            s.close()
    raise RuntimeError("no free loopback port")


def die_with_parent():
    # If this test is killed (a CTest timeout), its servers go too.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def start(self, name, argv, env):
        log = open(os.path.join(self.tmp, name + ".log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                             preexec_fn=die_with_parent)
        self.procs.append((name, p))
        return p

    def stop_all(self):
        for _, p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for name, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                print(f"{name} (pid {p.pid}) ignored SIGTERM: killed")

    def log(self, name):
        try:
            return open(os.path.join(self.tmp, name + ".log")).read()[-3000:]
        except OSError:
            return ""


def http_get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_for(what, fn, timeout):
    end = time.time() + timeout
    while True:
        try:
            v = fn()
            if v:
                return v
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if time.time() > end:
            return None
        time.sleep(0.2)


def ctl(bin_dir, env, *args):
    r = subprocess.run([os.path.join(bin_dir, "atomqctl"), "--plaintext", *args],
                       capture_output=True, text=True, env=env, timeout=30)
    return r.returncode, r.stdout + r.stderr


def start_cluster(bin_dir, procs, tmp, env):
    """{name: metrics address} of p1, p2 (a group of one) and c1, once each
    answers; None if one does not come up."""
    taken = set()
    ports = {k: free_port(taken) for k in ("p1", "p1m", "p2", "p2peer", "p2m", "c1", "c1m")}
    a = {k: f"127.0.0.1:{v}" for k, v in ports.items()}
    common = ["--plaintext", f"--coordinators=c1={a['c1']}"]
    procs.start("p1", [os.path.join(bin_dir, "atomq-participant"), "--id=p1", *common,
                       f"--listen={a['p1']}", f"--data_dir={tmp}/p1", f"--metrics_listen={a['p1m']}"], env)
    procs.start("p2", [os.path.join(bin_dir, "atomq-participant"), "--id=p2", *common,
                       f"--group=1={a['p2']}/{a['p2peer']}", "--member_id=1", f"--listen={a['p2']}",
                       f"--data_dir={tmp}/p2", f"--metrics_listen={a['p2m']}"], env)
    procs.start("c1", [os.path.join(bin_dir, "atomq-coordinator"), "--id=c1", "--plaintext",
                       f"--participants=p1={a['p1']},p2={a['p2']}", f"--listen={a['c1']}",
                       f"--data_dir={tmp}/c1", f"--metrics_listen={a['c1m']}"], env)
    metrics = {"p1": a["p1m"], "p2": a["p2m"], "c1": a["c1m"]}
    for name, addr in metrics.items():
        if not check(wait_for(name, lambda: http_get(f"http://{addr}/metrics"), 20) is not None,
                     f"{name} serves no /metrics on {addr} within 20 s:\n{procs.log(name)}"):
            return None, None
    return a, metrics


def run_transactions(bin_dir, env, a, procs):
    """The ids of the transactions run; [] if the queues cannot be made."""
    for node, queue in (("p1", "orders"), ("p2", "audit")):
        # p2 serves once its group of one has elected itself.
        made = wait_for(f"queue {queue}", lambda: ctl(bin_dir, env, f"--participant={a[node]}",
                                                       "queue", "create", queue)[0] == 0, 20)
        if not check(made, f"atomqctl queue create {queue} on {node} failed:\n{procs.log(node)}"):
            return []
    ids = []
    rc, out = ctl(bin_dir, env, f"--coordinator={a['c1']}", "txn", "exec",
                  "--enqueue=p1:orders=hello", "--enqueue=p2:audit=hi")
    check(rc == 0 and "COMMITTED" in out, f"atomqctl txn exec did not commit: {out}")
    ids += re.findall(r"^(\S+) COMMITTED", out, re.M)
    # p2 votes NO: an aborted outcome (and its id) in the scrapes too.
    rc, out = ctl(bin_dir, env, f"--coordinator={a['c1']}", "txn", "exec",
                  "--enqueue=p1:orders=x", "--enqueue=p2:no-such-queue=y")
    check("ABORTED" in out, f"the transaction to a missing queue did not abort: {out}")
    ids += re.findall(r"^(\S+) ABORTED", out, re.M)
    check(bool(ids), "atomqctl printed no transaction id")
    return ids


# --- a real Prometheus ----------------------------------------------------------

def prometheus_checks(procs, tmp, metrics, env):
    taken = {int(v.rsplit(":", 1)[1]) for v in metrics.values()}
    web = f"127.0.0.1:{free_port(taken)}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [ALERTS],
        # Job names as alerts.yml assumes (a participant's contains "participant").
        "scrape_configs": [
            {"job_name": "atomq-participant", "static_configs": [{"targets": [metrics["p1"], metrics["p2"]]}]},
            {"job_name": "atomq-coordinator", "static_configs": [{"targets": [metrics["c1"]]}]}]}
    path = os.path.join(tmp, "prometheus.yml")
    yaml.safe_dump(config, open(path, "w"))
    procs.start("prometheus", ["prometheus", f"--config.file={path}", f"--web.listen-address={web}",
                               f"--storage.tsdb.path={tmp}/prometheus"], env)
    api = f"http://{web}/api/v1"

    def get(path, **params):
        body = json.loads(http_get(f"{api}/{path}?{urllib.parse.urlencode(params)}", timeout=5))
        return body["data"] if body.get("status") == "success" else None

    def targets_scraped():
        t = get("targets")
        active = t["activeTargets"] if t else []
        return active if len(active) == 3 and all(x.get("lastScrape", "").startswith("2") and
                                                  x.get("health") != "unknown" for x in active) else None

    active = wait_for("prometheus targets", targets_scraped, 30)
    if not check(active is not None, f"Prometheus did not scrape the three servers:\n{procs.log('prometheus')}"):
        return
    for t in active:
        check(t.get("health") == "up",
              f"Prometheus cannot scrape {t.get('scrapeUrl')}: {t.get('lastError')}")
    down = get("query", query='up{job=~".*participant.*"}')
    check(down is not None and len(down["result"]) == 2,
          f"up{{job=~\".*participant.*\"}} (AtomqParticipantDown) does not see both participants: {down}")

    # Rates need two samples in their window: give the scrapes a few seconds.
    exprs = dashboard_exprs()

    def answers(e):
        q = grafana_to_promql(e).replace("[1m]", "[10s]")
        d = get("query", query=q)
        return d is not None and len(d["result"]) > 0

    def all_answer():
        return all(answers(e) for _, e in exprs) or None

    wait_for("dashboard data", all_answer, 20)
    for where, e in exprs:
        check(answers(e), f"{where}: no data from a Prometheus scraping the servers: {e}")

    def rules_evaluated():
        d = get("rules")
        rules = [r for g in (d or {}).get("groups", []) for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules) else None

    rules = wait_for("rules", rules_evaluated, 20) or []
    check(len(rules) == len(alert_rules()), f"Prometheus loaded {len(rules)} of {len(alert_rules())} rules")
    for r in rules:
        check(r.get("health") == "ok", f"alert {r.get('name')}: {r.get('health')} {r.get('lastError')}")
        # Nothing is wrong with this cluster: no alert may fire.
        check(r.get("state") != "firing", f"alert {r.get('name')} fires on a healthy cluster")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    bin_dir = os.path.abspath(sys.argv[1])
    self_test_metric_names()
    binaries = ("atomq-participant", "atomq-coordinator", "atomqctl")
    if not all(check(os.access(os.path.join(bin_dir, b), os.X_OK), f"no {b} in {bin_dir}") for b in binaries):
        return report("metrics")
    for tool in ("promtool", "prometheus"):
        check(shutil.which(tool) is not None,
              f"{tool} not found: deploy/local/install-deps.sh installs it (Debian's prometheus)")

    # The names every panel and alert use, and where.
    used = {}
    for where, e in dashboard_exprs() + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]:
        names, unknown = metric_names(e)
        check(bool(names), f"{where}: no metric name found in {e}")
        check(not unknown, f"{where}: unknown functions {sorted(unknown)}")
        for n in names:
            used.setdefault(n, []).append(where)

    tmp = tempfile.mkdtemp(prefix="atomq-metrics-")
    # No config, TLS or address of the caller's environment reaches atomqctl.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMQ_")}
    env.update(HOME=tmp, ATOMQ_PLAINTEXT="1")
    procs = Procs(tmp)
    stop = lambda *_: sys.exit(1)  # noqa: E731  (SIGTERM from CTest: still clean up)
    signal.signal(signal.SIGTERM, stop)
    try:
        a, metrics = start_cluster(bin_dir, procs, tmp, env)
        if a is None:
            return report("metrics")
        ids = run_transactions(bin_dir, env, a, procs)
        raw = {name: http_get(f"http://{addr}/metrics") for name, addr in metrics.items()}
        scrapes = {name: parse_scrape(text, name) for name, text in raw.items()}

        # Every name the dashboard and alerts use is served (up aside).
        served = set()
        families = set()
        for s in scrapes.values():
            for name, _, _ in s["samples"]:
                served.add(name)
                families.add(family_of(name, s["type"]))
        missing = {}
        for n, wheres in sorted(used.items()):
            if n in NOT_SERVED:
                continue
            ok = check(n in served, f"{n} is not served (used by {', '.join(sorted(set(wheres)))})")
            if not ok:
                missing[n] = wheres
        if missing:
            print("names the scrapes lack:", " ".join(sorted(missing)))
        for n in sorted(n for n in used if n.endswith(HISTOGRAM_SUFFIXES)):
            base = n.rsplit("_", 1)[0]
            check(base in families or n in missing, f"{n}: {base} is not a histogram family")

        for name, s in scrapes.items():
            check_conventions(s, name, queues={"orders", "audit"})
            # A transaction's id never becomes a label value.
            for txn in ids:
                check(f'"{txn}"' not in raw[name], f"{name}: transaction id {txn} is a label value")
            r = subprocess.run(["promtool", "check", "metrics"], input=raw[name],
                               capture_output=True, text=True)
            check(r.returncode == 0, f"{name}: promtool check metrics: {r.stdout}{r.stderr}")
        check(any(n.startswith("atomq_replica_") for n, _, _ in scrapes["p2"]["samples"]),
              "the group member p2 serves no atomq_replica_* series")

        if shutil.which("prometheus"):
            prometheus_checks(procs, tmp, metrics, env)
    finally:
        procs.stop_all()
        for name, p in procs.procs:
            check(p.returncode is not None, f"{name} (pid {p.pid}) still runs")
        shutil.rmtree(tmp, ignore_errors=True)
    return report("metrics")


if __name__ == "__main__":
    sys.exit(main())
