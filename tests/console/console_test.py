"""The web console in a real browser (issue 15 item 1): headless Chromium,
driven through chromedriver by Selenium, against a live cluster on
loopback with mTLS on every link, a roles file and tokens. It signs in,
reads each page and checks it against what atomqctl says, makes a
transaction in doubt on purpose (the coordinator dies after its Prepares),
resolves it at one participant through the confirmation dialog (the other
settles from it by the protocol), and checks that who did it was recorded. Screenshots go to the directory given
(README shows them, from docs/console/).

  console_test.py BIN_DIR SCREENSHOT_DIR
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checks import check, report  # noqa: E402
from ports import free_port  # noqa: E402

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BIN = Path(sys.argv[1])
SHOTS = Path(sys.argv[2])
ADMIN = "admin-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdef"


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Cluster:
    """c1, p1 and p2, each with its console on --http_listen (HTTPS)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="atomq-console-"))
        self.procs = {}
        self.port = {n: free_port() for n in ["c1", "p1", "p2"]}
        self.p2_peer = free_port()  # p2 is a group of one replica
        self.http = {n: free_port() for n in ["c1", "p1", "p2"]}
        self.tls = self.dir / "tls"
        self.tls.mkdir()
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
                "-keyout", f"{self.tls}/ca.key", "-out", f"{self.tls}/ca.pem")
        for name in ["c1", "p1", "p2", "client"]:
            self.certificate(name, name)
        self.write("roles", "c1 peer\np1 peer\np2 peer\nclient producer,consumer,operator\n"
                   "admin producer,consumer,operator\nviewer consumer\n")
        self.write("tokens", f"admin {ADMIN}\nviewer {VIEWER}\n")

    def certificate(self, name, file):
        """A certificate and key for `name`, signed by the CA, as FILE.pem/.key."""
        f = self.tls / file
        san = "DNS:client" if name == "client" else f"DNS:{name},IP:127.0.0.1"
        (self.tls / f"{file}.ext").write_text(f"subjectAltName={san}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{f}.key", "-out", f"{f}.csr")
        openssl("x509", "-req", "-in", f"{f}.csr", "-CA", f"{self.tls}/ca.pem", "-CAkey",
                f"{self.tls}/ca.key", "-CAcreateserial", "-days", "2", "-extfile",
                f"{f}.ext", "-out", f"{f}.pem")

    def write(self, name, text):
        path = self.dir / name
        path.write_text(text)
        path.chmod(0o600)

    def addr(self, name):
        return f"127.0.0.1:{self.port[name]}"

    def server_args(self, name):
        t = self.tls
        return [f"--id={name}", f"--listen={self.addr(name)}", f"--data_dir={self.dir / name}",
                f"--tls_cert={t}/{name}.pem", f"--tls_key={t}/{name}.key", f"--tls_ca={t}/ca.pem",
                "--tls_client_auth=require", f"--roles_file={self.dir}/roles",
                f"--tokens_file={self.dir}/tokens", f"--http_listen=127.0.0.1:{self.http[name]}",
                "--console_sample_ms=500", "--resend_initial_ms=50", "--resend_max_ms=300",
                "--tls_reload_s=1"]

    def start(self, name, env=None, args=()):
        if name == "c1":
            binary = "atomq-coordinator"
            extra = [f"--participants=p1={self.addr('p1')},p2={self.addr('p2')}", *args]
        else:
            other = "p2" if name == "p1" else "p1"
            binary = "atomq-participant"
            extra = [f"--coordinators=c1={self.addr('c1')}", f"--peers={other}={self.addr(other)}",
                     "--in_doubt_after_ms=300"]
            if name == "p2":
                extra += [f"--group=1={self.addr('p2')}/127.0.0.1:{self.p2_peer}", "--member_id=1"]
        log = open(self.dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [str(BIN / binary), *self.server_args(name), *extra], stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        log.close()

    def ctl(self, *args, check_rc=True):
        env = {**os.environ, "ATOMQ_TLS_CA": f"{self.tls}/ca.pem",
               "ATOMQ_TLS_CERT": f"{self.tls}/client.pem", "ATOMQ_TLS_KEY": f"{self.tls}/client.key"}
        env.pop("ATOMQ_PLAINTEXT", None)
        r = subprocess.run([str(BIN / "atomqctl"), "--rpc_timeout_ms=2000", *args], env=env,
                           capture_output=True, text=True, timeout=30)
        if check_rc and r.returncode != 0:
            raise RuntimeError(f"atomqctl {args}: {r.stdout}{r.stderr}")
        return r

    def wait_up(self, name):
        end = time.monotonic() + 15
        what = ["--coordinator", "txn", "list"] if name == "c1" else ["--participant", "queue", "list"]
        while time.monotonic() < end:
            r = self.ctl(f"{what[0]}={self.addr(name)}", *what[1:], check_rc=False)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not come up:\n{self.log(name)}")

    def kill(self, name):
        proc = self.procs.pop(name, None)
        if proc is not None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def log(self, name):
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def stop(self):
        for name in list(self.procs):
            self.kill(name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, name):
        return f"https://127.0.0.1:{self.http[name]}/"

    def spki(self, name):
        """The base64 SHA-256 of the certificate's public key: Chromium trusts
        exactly this certificate, nothing else."""
        pub = subprocess.run(["openssl", "x509", "-in", f"{self.tls}/{name}.pem", "-pubkey",
                              "-noout"], check=True, capture_output=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                             check=True, capture_output=True).stdout
        digest = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der, check=True,
                                capture_output=True).stdout
        return base64.b64encode(digest).decode()


def api(cluster, name, path, token=None, method="GET", body=None, headers=None):
    """(HTTP status, JSON body) of a console request, the CA checked."""
    ctx = ssl.create_default_context(cafile=str(cluster.tls / "ca.pem"))
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(cluster.url(name).rstrip("/") + path, method=method,
                                 data=body.encode() if body else None, headers=h)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def browser(cluster):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
              "--disable-dev-shm-usage", f"--user-data-dir={cluster.dir / 'chromium'}",
              "--ignore-certificate-errors-spki-list=" +
              ",".join(cluster.spki(n) for n in ["c1", "p1", "p2"])]:
        options.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait(driver, what, condition, timeout=15):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception:
        check(False, f"{what} (page: {driver.find_element(By.TAG_NAME, 'body').text[:600]!r})")
        return None


def text(driver, selector):
    """The text of what `selector` matches, read in one step: the page
    redraws its tables every few seconds."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map((e) => e.innerText).join(' ')", selector)


def cells(driver, selector):
    return driver.execute_script(
        "const r = document.querySelector(arguments[0]);"
        "return r ? Array.from(r.cells).map((c) => c.innerText) : [];", selector)


def click(driver, selector):
    """Clicks the first match, found and clicked in one step; False if none."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", selector)


def drawn(driver, page):
    return driver.execute_script("return document.body.dataset.drawn") == page


def sign_in(driver, token):
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()


def load(cluster, seconds):
    """Transactions and receives for `seconds`, for the charts to draw."""
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        cluster.ctl(f"--coordinator={cluster.addr('c1')}", "txn", "exec",
                    f"--enqueue=p1:orders=load-{i}", f"--enqueue=p2:audit=load-{i}")
        if i % 3 == 2:
            cluster.ctl(f"--participant={cluster.addr('p1')}", "queue", "receive", "orders",
                        "--max=2")
        i += 1


def healthy_cluster(cluster, d):
    d.get(cluster.url("c1"))
    wait(d, "the sign-in form shows", lambda d: d.find_element(By.ID, "signin").is_displayed())
    sign_in(d, "wrong-token-0123456789abcdef")
    wait(d, "an unknown token is refused", lambda d: "not known" in text(d, "#status"))
    sign_in(d, ADMIN)
    wait(d, "the cluster page draws", lambda d: drawn(d, "cluster"))
    check("signed in as admin" in text(d, "#who"), "the header names the identity")
    for n in ["c1", "p1", "p2"]:
        row = text(d, f"#nodes tr[data-node={n}]")
        check("serving" in row, f"{n} shows serving: {row!r}")
    # p2 is a group (of one replica): its member's version; p1 is alone.
    check(re.search(r"member 1: [1-9][0-9]*", text(d, "#nodes tr[data-node=p2]")) is not None,
          f"p2 shows its replica's version: {text(d, '#nodes tr[data-node=p2]')!r}")
    check("member" not in text(d, "#nodes tr[data-node=p1]"), "p1, alone, shows no replica version")
    d.save_screenshot(str(SHOTS / "cluster.png"))

    d.get(cluster.url("c1") + "#queues")
    wait(d, "the queues page draws", lambda d: drawn(d, "queues"))
    load(cluster, seconds=4)
    time.sleep(1.2)  # two more samples for the rates
    d.refresh()
    wait(d, "the queues page draws again", lambda d: drawn(d, "queues"))
    listed = cluster.ctl(f"--participant={cluster.addr('p1')}", "queue", "list").stdout
    row = cells(d, "#queues tr[data-queue='p1/orders']")
    ready = [line.split() for line in listed.splitlines() if line.startswith("orders")]
    check(ready and row and row[2] == ready[0][2], f"p1/orders ready {row} as atomqctl says {ready}")
    check(len(d.find_elements(By.CSS_SELECTOR, "#charts svg polyline")) >= 4,
          "each participant has its rate and depth charts")
    code, history = api(cluster, "c1", "/api/history", ADMIN)
    enqueued = [int(q["enqueuedTotal"]) for s in history.get("samples", [])
                for p in s["participants"] if p["participant"] == "p1"
                for q in p["queues"] if q["name"] == "orders"]
    check(code == 200 and len(enqueued) >= 4 and enqueued[-1] > enqueued[0],
          f"the samples charted saw the load: {enqueued}")
    d.save_screenshot(str(SHOTS / "queues.png"))


def viewer_refused(cluster, d):
    """The viewer holds no operator role: the gRPC API refuses its listing,
    and the page offers no resolve."""
    d.execute_script("sessionStorage.clear()")
    d.get(cluster.url("p1") + "#transactions")
    wait(d, "the sign-in form shows", lambda d: d.find_element(By.ID, "signin").is_displayed())
    sign_in(d, VIEWER)
    wait(d, "the transactions page draws", lambda d: drawn(d, "transactions"))
    check("PERMISSION_DENIED" in text(d, "#prepared") and "viewer" in text(d, "#prepared"),
          f"a viewer's listing is refused by the gRPC API: {text(d, '#prepared')!r}")
    check(not d.find_elements(By.CSS_SELECTOR, "button.resolve"), "a viewer gets no resolve button")
    d.execute_script("sessionStorage.clear()")


def make_in_doubt(cluster):
    """c1 dies once its COMMIT record is durable, before it tells anyone:
    p1 and p2 hold the transaction in doubt, and the operator who finds the
    lost coordinator's log committed commits it."""
    cluster.kill("c1")
    cluster.start("c1", env={"ATOMQ_CRASH_AT": "after-decision-logged"},
                  args=["--parallel_commit=false"])
    cluster.wait_up("c1")
    cluster.ctl(f"--coordinator={cluster.addr('c1')}", "txn", "exec", "--id=doubt-1",
                "--enqueue=p1:orders=o-1", "--enqueue=p2:audit=a-1", check_rc=False)
    cluster.procs.pop("c1").wait(timeout=10)
    return "doubt-1"


def resolve(cluster, d, participant, txn):
    row = f"#prepared tr[data-txn='{txn}'][data-participant={participant}]"
    if not wait(d, f"{participant} offers a resolve of {txn}",
                lambda d: click(d, row + " button.resolve")):
        return
    submit = d.find_element(By.ID, "resolve-submit")
    check(not submit.is_enabled(), "resolve waits for the id typed")
    d.find_element(By.ID, "resolve-confirm-id").send_keys(txn[:-1])
    check(not submit.is_enabled(), "a wrong id does not confirm")
    d.find_element(By.ID, "resolve-confirm-id").send_keys(txn[-1])
    d.find_element(By.ID, "resolve-note").send_keys("c1's disk was lost; its last backup says committed")
    click(d, "input[name=outcome][value=COMMITTED]")
    check(submit.is_enabled(), "the typed id confirms")
    if participant == "p1":
        d.save_screenshot(str(SHOTS / "resolve.png"))
    submit.click()
    wait(d, f"{participant} answers the resolve",
         lambda d: "Resolved: committed (heuristic)" in text(d, "#resolve-result"))


def in_doubt(cluster, d, txn):
    d.get(cluster.url("p1"))
    wait(d, "the sign-in form shows", lambda d: d.find_element(By.ID, "signin").is_displayed())
    sign_in(d, ADMIN)
    wait(d, "p1's cluster page draws", lambda d: drawn(d, "cluster"))
    wait(d, "c1 shows unreachable",
         lambda d: "unreachable" in text(d, "#nodes tr[data-node=c1]"))
    d.get(cluster.url("p1") + "#transactions")
    for p in ["p1", "p2"]:
        wait(d, f"{txn} in doubt at {p}",
             lambda d: "in doubt" in text(d, f"#prepared tr[data-txn='{txn}'][data-participant={p}]"))
    check("c1" in text(d, "#coordinator-txns") and "UNAVAILABLE" in text(d, "#coordinator-txns"),
          "the lost coordinator is shown unreachable")
    d.save_screenshot(str(SHOTS / "transactions.png"))

    code, body = api(cluster, "p1", "/api/resolve", ADMIN, "POST",
                     json.dumps({"participant": "p1", "txnId": txn, "outcome": "ABORTED"}),
                     {"Content-Type": "application/json"})
    check(code == 403, f"a resolve without the console's header is refused: {code} {body}")
    code, body = api(cluster, "p1", "/api/resolve", None, "POST",
                     json.dumps({"participant": "p1", "txnId": txn, "outcome": "ABORTED"}),
                     {"Content-Type": "application/json", "X-Atomq-Console": "1"})
    check(code == 401, f"a resolve without a token is refused: {code} {body}")
    code, body = api(cluster, "p1", "/api/resolve", ADMIN, "POST", "{not json",
                     {"Content-Type": "application/json", "X-Atomq-Console": "1"})
    check(code == 400, f"a body that is not JSON is refused: {code} {body}")

    # Resolved at p1, the transaction settles at p2 by itself: p2 asks its
    # peers about what it holds in doubt, and p1 now knows the outcome.
    def audit_ready():
        out = cluster.ctl(f"--participant={cluster.addr('p2')}", "queue", "list").stdout
        rows = [line.split() for line in out.splitlines() if line.startswith("audit ")]
        return int(rows[0][2]) if rows else -1

    before = audit_ready()
    resolve(cluster, d, "p1", txn)
    wait(d, "the dialog closes", lambda d: not d.find_element(By.ID, "resolve-dialog").is_displayed())
    wait(d, "p2 settles from p1's outcome",
         lambda d: text(d, f"#prepared tr[data-txn='{txn}']") == "")
    wait(d, "p1's heuristic outcome is listed",
         lambda d: "admin" in text(d, f"#heuristic tr[data-txn='{txn}'][data-participant=p1]"))
    row = text(d, f"#heuristic tr[data-txn='{txn}'][data-participant=p1]")
    check("committed" in row and "admin" in row and "disk was lost" in row,
          f"p1's heuristic outcome names who and why: {row!r}")
    check(text(d, f"#heuristic tr[data-txn='{txn}'][data-participant=p2]") == "",
          "p2 settled by the protocol, not by hand")
    d.save_screenshot(str(SHOTS / "heuristic.png"))
    shown = cluster.ctl(f"--participant={cluster.addr('p1')}", "txn", "list").stdout
    row = [line.split() for line in shown.splitlines() if line.startswith(txn)]
    check(row and row[0][1] == "committed" and "admin" in row[0],
          f"atomqctl lists who resolved it: {shown!r}")
    check(audit_ready() == before + 1, f"p2 committed its part: {before} ready before")
    check('audit who="admin" action="resolve"' in cluster.log("p1"), "p1 audited the resolve")


def bad_flags():
    """A console that would carry tokens in the clear off loopback, or an
    address that is not host:port, refuses start before the data dir."""
    for listen, says in [("0.0.0.0:1", "not a loopback address"), ("nowhere", "want host:port")]:
        d = tempfile.mkdtemp(prefix="atomq-console-flags-")
        r = subprocess.run([str(BIN / "atomq-participant"), "--id=p1", "--listen=127.0.0.1:1",
                            f"--data_dir={d}/p1", "--coordinators=c1=127.0.0.1:2", "--plaintext",
                            f"--http_listen={listen}"], capture_output=True, text=True, timeout=10)
        check(r.returncode == 2 and says in r.stderr and not os.path.exists(f"{d}/p1"),
              f"--http_listen={listen} refused: {r.returncode} {r.stderr!r}")
        shutil.rmtree(d, ignore_errors=True)


def rotation(cluster):
    """A certificate replaced on disk is served by the console from a
    handshake after --tls_reload_s, without a restart."""
    def served():
        ctx = ssl.create_default_context(cafile=str(cluster.tls / "ca.pem"))
        with socket.create_connection(("127.0.0.1", cluster.http["p2"]), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as t:
                return t.getpeercert(binary_form=True)
    before = served()
    cluster.certificate("p2", "p2-next")
    os.replace(cluster.tls / "p2-next.key", cluster.tls / "p2.key")
    os.replace(cluster.tls / "p2-next.pem", cluster.tls / "p2.pem")
    want = ssl.PEM_cert_to_DER_cert((cluster.tls / "p2.pem").read_text())
    check(want != before, "the new certificate differs from the one served")
    end = time.monotonic() + 10
    now = before
    while now != want and time.monotonic() < end:
        time.sleep(0.3)
        now = served()
    check(now == want, "the console did not serve the certificate replaced on disk")
    check(api(cluster, "p2", "/api/session", ADMIN)[0] == 200, "the console answers after it")


def main():
    SHOTS.mkdir(parents=True, exist_ok=True)
    bad_flags()
    cluster = Cluster()
    d = None
    try:
        for n in ["p1", "p2", "c1"]:
            cluster.start(n)
        for n in ["p1", "p2", "c1"]:
            cluster.wait_up(n)
        cluster.ctl(f"--participant={cluster.addr('p1')}", "queue", "create", "orders")
        cluster.ctl(f"--participant={cluster.addr('p2')}", "queue", "create", "audit")
        for i in range(12):
            cluster.ctl(f"--coordinator={cluster.addr('c1')}", "txn", "exec",
                        f"--enqueue=p1:orders=order-{i}", f"--enqueue=p2:audit=created-{i}")
        cluster.ctl(f"--participant={cluster.addr('p1')}", "queue", "receive", "orders",
                    "--max=4")
        code, body = api(cluster, "c1", "/api/cluster")
        check(code == 401, f"the API without a token is refused: {code} {body}")
        d = browser(cluster)
        healthy_cluster(cluster, d)
        viewer_refused(cluster, d)
        in_doubt(cluster, d, make_in_doubt(cluster))
        rotation(cluster)
    finally:
        if d is not None:
            d.quit()
        if os.environ.get("ATOMQ_CONSOLE_TEST_KEEP"):
            print("kept", cluster.dir)
            for n in list(cluster.procs):
                cluster.kill(n)
        else:
            cluster.stop()
    return report("console_test")


if __name__ == "__main__":
    sys.exit(main())
