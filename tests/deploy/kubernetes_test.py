#!/usr/bin/python3
"""Checks deploy/kubernetes.

  kubernetes_test.py BIN_DIR         every manifest parsed and its properties
                                     asserted; each StatefulSet's start script
                                     run per pod with a stand-in binary, its
                                     flags checked against the real --help
  kubernetes_test.py BIN_DIR --live  the same scripts run the real servers, as
                                     the pods would: in a private mount
                                     namespace whose /etc/hosts maps the pods'
                                     DNS names to loopback, with certificates
                                     made as the manifests say; a transaction
                                     commits, a member whose disk is lost is
                                     replaced as docs/operations.md says, and
                                     SIGTERM stops every server with exit 0
"""
import glob
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, report  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
NS, DOMAIN = "atomq-test", "cluster.local"



def load():
    docs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/kubernetes/*.yaml"))):
        for d in yaml.safe_load_all(open(path)):
            if d:
                check("namespace" not in d.get("metadata", {}), f"{path}: sets a namespace")
                docs.append(d)
    return docs


def of_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_number(container, port):
    """The containerPort a probe's port (name or number) names, or None."""
    for p in container.get("ports", []):
        if port in (p.get("name"), p.get("containerPort")):
            return p["containerPort"]
    return None


def mount_of(container, volume_name):
    for m in container.get("volumeMounts", []):
        if m["name"] == volume_name:
            return m["mountPath"]
    return None


def env_value(container, name):
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None


def pod_env(sts, ordinal):
    c = sts["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": os.environ["PATH"], "POD_NAME": f"{sts['metadata']['name']}-{ordinal}",
           "POD_NAMESPACE": NS}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    return env


def script_of(container):
    cmd = container.get("command", []) + container.get("args", [])
    check(cmd[:2] == ["/bin/sh", "-c"] and len(cmd) == 3,
          f"{container['name']}: command is not /bin/sh -c SCRIPT")
    return cmd[2] if len(cmd) == 3 else "exit 1"


def flags(argv):
    out = {}
    for a in argv[1:]:
        k, _, v = a.partition("=")
        out[k] = v
    return out


def run_scripts(sts, members=None):
    """Each pod's start script with a stand-in for the binary that prints its
    argv: {ordinal: argv}. `members`: {pod name: member id} in the optional
    members ConfigMap."""
    c = sts["spec"]["template"]["spec"]["containers"][0]
    script = script_of(c)
    with tempfile.TemporaryDirectory() as fake:
        if members is not None:
            os.makedirs(f"{fake}/members")
            for pod, member in members.items():
                open(f"{fake}/members/{pod}", "w").write(f"{member}\n")
            script = script.replace(mount_of(c, "members") + "/", f"{fake}/members/")
        for b in ("atomq-coordinator", "atomq-participant"):
            with open(os.path.join(fake, b), "w") as f:
                f.write('#!/bin/sh\nprintf "%s\\0" "$(basename "$0")" "$@"\n')
            os.chmod(os.path.join(fake, b), 0o755)
        result = {}
        for i in range(sts["spec"]["replicas"]):
            env = pod_env(sts, i)
            env["PATH"] = fake + ":" + env["PATH"]
            r = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True)
            check(r.returncode == 0, f"{env['POD_NAME']}: start script failed: {r.stderr!r}")
            result[i] = r.stdout.decode().rstrip("\0").split("\0")
        return result


def fqdn(sts, ordinal):
    name = sts["metadata"]["name"]
    return f"{name}-{ordinal}.{sts['spec']['serviceName']}.{NS}.svc.{DOMAIN}"


def client_addresses(sts):
    c = sts["spec"]["template"]["spec"]["containers"][0]
    port = port_number(c, "client")
    return "|".join(f"{fqdn(sts, i)}:{port}" for i in range(sts["spec"]["replicas"]))


def check_statefulset(sts, docs, bin_dir, image_user, exposed):
    name = sts["metadata"]["name"]
    spec = sts["spec"]
    tmpl = spec["template"]
    labels = tmpl["metadata"].get("labels", {})
    check(selects(spec["selector"].get("matchLabels"), labels), f"{name}: selector misses its pods")
    check(spec.get("replicas") == 3, f"{name}: replicas is not 3")
    # A new group starts only with every member up: OrderedReady would wait.
    check(spec.get("podManagementPolicy") == "Parallel", f"{name}: podManagementPolicy not Parallel")

    svcs = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == spec.get("serviceName")]
    if check(len(svcs) == 1, f"{name}: serviceName {spec.get('serviceName')} names no Service"):
        s = svcs[0]["spec"]
        check(s.get("clusterIP") == "None", f"{name}: its Service is not headless")
        check(s.get("publishNotReadyAddresses") is True,
              f"{name}: its Service hides members that are not ready from their peers")
        check(selects(s.get("selector"), labels), f"{name}: its Service does not select its pods")

    pdbs = [p for p in of_kind(docs, "PodDisruptionBudget")
            if selects(p["spec"].get("selector", {}).get("matchLabels"), labels)]
    if check(len(pdbs) == 1, f"{name}: no PodDisruptionBudget selects its pods"):
        check(pdbs[0]["spec"].get("maxUnavailable") == 1, f"{name}: PDB maxUnavailable is not 1")

    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    check(bool(claims), f"{name}: no volumeClaimTemplates")
    pod = tmpl["spec"]
    sc = pod.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot is not true")
    check(sc.get("runAsUser") == image_user, f"{name}: runAsUser {sc.get('runAsUser')} is not "
          f"the image's USER {image_user}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secrets = [n for n, v in volumes.items() if "secret" in v]
    configmaps = [n for n, v in volumes.items() if "configMap" in v]
    check(bool(secrets), f"{name}: no Secret volume (TLS)")
    for n in secrets:
        # A tokens file others may read is refused (common/auth.h), and keys too.
        check(volumes[n]["secret"].get("defaultMode", 0o644) & 0o007 == 0,
              f"{name}: Secret volume {n} is readable by others")

    check(len(pod["containers"]) == 1, f"{name}: not one container")
    c = pod["containers"][0]
    ports = [p["containerPort"] for p in c.get("ports", [])]
    for p in ports:
        check(p in exposed, f"{name}: port {p} is not EXPOSEd by the Containerfile")
    if svcs:
        for p in svcs[0]["spec"].get("ports", []):
            check(p.get("targetPort", p["port"]) in ports, f"{name}: Service port {p} not declared")
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        if not check(probe is not None, f"{name}: no {kind}"):
            continue
        how = [k for k in ("grpc", "tcpSocket", "httpGet", "exec") if k in probe]
        check(how in (["grpc"], ["tcpSocket"]), f"{name}: {kind} is not a grpc or tcpSocket probe")
        if how:
            check(port_number(c, probe[how[0]].get("port")) is not None,
                  f"{name}: {kind} port {probe[how[0]].get('port')} is not a declared containerPort")
        # A group's followers answer NOT_SERVING on the client port, for ""
        # too (common/server_util.cc StandInServer): a gRPC health probe
        # there would hold two of three members unready or restart them.
        check(how != ["grpc"], f"{name}: {kind} is a gRPC health probe; followers fail it")
    res = c.get("resources", {})
    for k in ("requests", "limits"):
        check({"cpu", "memory"} <= set(res.get(k, {})), f"{name}: no cpu and memory {k}")
    check(c.get("securityContext", {}).get("allowPrivilegeEscalation") is False,
          f"{name}: allowPrivilegeEscalation is not false")
    check(env_value(c, "ATOMQ_REPLICAS") == str(spec["replicas"]),
          f"{name}: ATOMQ_REPLICAS is not spec.replicas")

    help_text = subprocess.run([os.path.join(bin_dir, f"atomq-{labels['app.kubernetes.io/component']}"),
                                "--help"], capture_output=True, text=True).stdout
    runs = run_scripts(sts)
    for i, argv in runs.items():
        pod_name = f"{name}-{i}"
        f = flags(argv)
        for k in f:
            check(re.search(rf"^ +{re.escape(k)}( |$)", help_text, re.M) is not None,
                  f"{pod_name}: {argv[0]} has no {k}")
        check(f.get("--member_id") == str(i + 1), f"{pod_name}: --member_id is not {i + 1}")
        cport, pport = port_number(c, "client"), port_number(c, "peer")
        group = ",".join(f"{j + 1}={fqdn(sts, j)}:{cport}/{fqdn(sts, j)}:{pport}"
                         for j in range(spec["replicas"]))
        check(f.get("--group") == group, f"{pod_name}: --group is {f.get('--group')}, not {group}")
        check(f.get("--listen") == f"{fqdn(sts, i)}:{cport}", f"{pod_name}: --listen is not its own")
        under = lambda path, vols: any(mount_of(c, v) and path.startswith(mount_of(c, v) + "/")
                                       for v in vols)
        check(under(f.get("--data_dir", ""), claims), f"{pod_name}: --data_dir not on its claim")
        for k in ("--tls_cert", "--tls_key", "--tls_ca"):
            check(under(f.get(k, ""), secrets), f"{pod_name}: {k} is not in the Secret volume")
        check(under(f.get("--roles_file", ""), configmaps),
              f"{pod_name}: --roles_file is not in a ConfigMap volume")
        check("--join" not in f, f"{pod_name}: --join without a replaced member")
        mport = port_number(c, "metrics")
        check(f.get("--metrics_listen") == f"{fqdn(sts, i)}:{mport}" and
              "--metrics_allow_remote" in f, f"{pod_name}: /metrics not on its metrics port")
        hport = port_number(c, "console")
        check(hport is not None and f.get("--http_listen") == f"{fqdn(sts, i)}:{hport}" and
              "--http_allow_remote" in f, f"{pod_name}: the web console is not on its console port")
        check(under(f.get("--tokens_file", ""), secrets),
              f"{pod_name}: --tokens_file (the console's sign-in) is not in a Secret volume")
    notes = spec["template"]["metadata"].get("annotations", {})
    check(notes.get("prometheus.io/scrape") == "true" and
          notes.get("prometheus.io/port") == str(port_number(c, "metrics")),
          f"{name}: no prometheus.io annotations naming its metrics port")
    # A pod whose lost disk was replaced by member 4 (docs/operations.md):
    # it joins as 4, and the others' --group name it 4.
    check(mount_of(c, "members") is not None and "members" in volumes
          and volumes["members"].get("configMap", {}).get("optional") is True,
          f"{name}: no optional members ConfigMap volume")
    if mount_of(c, "members"):
        replaced = run_scripts(sts, {f"{name}-2": 4})
        f2, f0 = flags(replaced[2]), flags(replaced[0])
        check(f2.get("--member_id") == "4" and "--join" in f2,
              f"{name}-2: not member 4 with --join: {replaced[2]}")
        check(f"4={fqdn(sts, 2)}:" in f0.get("--group", "") and "--join" not in f0,
              f"{name}-0: --group does not name member 4: {f0.get('--group')}")
    return runs


def check_all(docs, bin_dir):
    text = open(os.path.join(ROOT, "deploy/container/Containerfile")).read()
    users = re.findall(r"^USER (\d+)", text, re.M)
    image_user = int(users[-1]) if users else None
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)", text, re.M) for p in line.split()}
    sets = {s["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: s
            for s in of_kind(docs, "StatefulSet")}
    check(set(sets) == {"coordinator", "participant"}, f"StatefulSets: {sorted(sets)}")
    runs = {k: check_statefulset(s, docs, bin_dir, image_user, exposed) for k, s in sets.items()}
    if len(runs) != 2:
        return sets
    # Each side names the other by its members' client addresses.
    co, pa = flags(runs["coordinator"][0]), flags(runs["participant"][0])
    check(pa.get("--coordinators") == f"{co['--id']}={client_addresses(sets['coordinator'])}",
          f"participant --coordinators {pa.get('--coordinators')} is not the coordinator group")
    check(f"{pa['--id']}={client_addresses(sets['participant'])}"
          in co.get("--participants", "").split(","),
          f"coordinator --participants {co.get('--participants')} lacks the participant group")
    # The roles file makes both servers peers.
    for s in sets.values():
        for v in s["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in v and not v["configMap"].get("optional"):
                cms = [m for m in of_kind(docs, "ConfigMap")
                       if m["metadata"]["name"] == v["configMap"]["name"]]
                if check(len(cms) == 1, f"ConfigMap {v['configMap']['name']} missing"):
                    roles = cms[0]["data"].get("roles", "")
                    for side in (co, pa):
                        check(re.search(rf"^{side['--id']}\s+\S*peer", roles, re.M) is not None,
                              f"roles do not make {side['--id']} a peer")
    return sets


CONSOLE_TOKEN = "k8s-console-test-token"


def check_console(coordinators, participant, tmp):
    """A coordinator pod's console, signed in with the tokens Secret's
    token over the pod's certificate, shows every replica of the
    participant group with its version."""
    cport = port_number(coordinators["spec"]["template"]["spec"]["containers"][0], "console")
    tls = ssl.create_default_context(cafile=f"{tmp}/ca.pem")
    url = f"https://{fqdn(coordinators, 0)}:{cport}"
    deadline, versions = time.time() + 15, []
    while time.time() < deadline:
        req = urllib.request.Request(url + "/api/cluster",
                                     headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"})
        nodes = json.load(urllib.request.urlopen(req, timeout=5, context=tls))["nodes"]
        members = [m for n in nodes if n["id"] == participant for m in n["members"]]
        versions = [int(m.get("replica", {}).get("appliedIndex", 0)) for m in members]
        if len(versions) == 3 and min(versions) > 0:
            break
        time.sleep(0.5)
    check(len(versions) == 3 and min(versions) > 0,
          f"the coordinator's console does not show {participant}'s replica versions: {versions}")
    session = urllib.request.Request(url + "/api/session",
                                     headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"})
    who = json.load(urllib.request.urlopen(session, timeout=5, context=tls))
    check(who.get("identity") == "ops" and "operator" in who.get("roles", []),
          f"the console's token is not ops the operator: {who}")


def live(docs, bin_dir, tmp):
    """Inside a private mount namespace: the pods' scripts start the real
    servers, transactions commit through both groups before and after a
    member is replaced, SIGTERM stops all."""
    sets = {s["metadata"]["name"]: s for s in of_kind(docs, "StatefulSet")}
    hosts = open("/etc/hosts").read() + "\n"
    for n, (name, s) in enumerate(sorted(sets.items())):
        for i in range(s["spec"]["replicas"]):
            hosts += f"127.0.{n + 77}.{i + 10} {fqdn(s, i)}\n"
    open(f"{tmp}/hosts", "w").write(hosts)
    subprocess.run(["mount", "--bind", f"{tmp}/hosts", "/etc/hosts"], check=True)

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")

    def cert(ident, sans):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ident}",
            "-keyout", f"{ident}.key", "-out", f"{ident}.csr")
        open(f"{tmp}/{ident}.ext", "w").write("subjectAltName=" + ",".join(sans) + "\n")
        ssl("x509", "-req", "-in", f"{ident}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{ident}.ext", "-out", f"{ident}.pem")

    pods = {}  # pod name -> [script, env, data dir, process]

    def start(pod_name):
        script, env, d, _ = pods[pod_name]
        log = open(f"{d}.log", "a")
        pods[pod_name][3] = subprocess.Popen(["/bin/sh", "-c", script], env=env, stdout=log,
                                             stderr=log)

    def stop(pod_name):
        p = pods[pod_name][3]
        p.terminate()  # SIGTERM, as the kubelet sends
        try:
            rc = p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        if not check(rc == 0, f"{pod_name} exited {rc} after SIGTERM"):
            print(open(f"{pods[pod_name][2]}.log").read()[-2000:])

    members_dir = {}
    for name, s in sets.items():
        pod = s["spec"]["template"]["spec"]
        c = pod["containers"][0]
        ident = flags(run_scripts(s)[0])["--id"]
        # As the manifest's comment says: first SAN the id, then the wildcard.
        cert(ident, [f"DNS:{ident}", f"DNS:*.{s['spec']['serviceName']}.{NS}.svc.{DOMAIN}"])
        script = script_of(c)
        for v in pod["volumes"]:
            d = f"{tmp}/{name}-{v['name']}"
            os.makedirs(d, exist_ok=True)
            if "secret" in v and f"{mount_of(c, v['name'])}/tokens" in script:
                open(f"{d}/tokens", "w").write(f"ops {CONSOLE_TOKEN}\n")
                os.chmod(f"{d}/tokens", 0o440)
            elif "secret" in v:
                for src, dst in (("pem", "tls.crt"), ("key", "tls.key")):
                    shutil.copy(f"{tmp}/{ident}.{src}", f"{d}/{dst}")
                shutil.copy(f"{tmp}/ca.pem", f"{d}/ca.crt")
            if "configMap" in v:
                cms = [m for m in of_kind(docs, "ConfigMap")
                       if m["metadata"]["name"] == v["configMap"]["name"]]
                for k, text in (cms[0]["data"] if cms else {}).items():
                    # The test's own client may do everything.
                    extra = "tester producer,consumer,operator\n" if k == "roles" else ""
                    open(f"{d}/{k}", "w").write(text + extra)
            script = script.replace(mount_of(c, v["name"]) + "/", d + "/")
        members_dir[name] = f"{tmp}/{name}-members"
        for i in range(s["spec"]["replicas"]):
            d = f"{tmp}/{name}-{i}"
            os.makedirs(d)
            pod_script = script
            for t in s["spec"]["volumeClaimTemplates"]:
                pod_script = pod_script.replace(mount_of(c, t["metadata"]["name"]) + "/", d + "/")
            env = pod_env(s, i)
            env["PATH"] = bin_dir + ":" + env["PATH"]
            pods[f"{name}-{i}"] = [pod_script, env, d, None]
            start(f"{name}-{i}")
    cert("tester", ["DNS:tester"])
    by_comp = {s["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: s
               for s in sets.values()}
    ctl = [f"{bin_dir}/atomqctl", f"--tls_ca={tmp}/ca.pem", f"--tls_cert={tmp}/tester.pem",
           f"--tls_key={tmp}/tester.key", "--rpc_timeout_ms=3000"]

    def atomqctl(*step):
        deadline, out = time.time() + 30, None
        while time.time() < deadline:
            r = subprocess.run(ctl + list(step), capture_output=True, text=True)
            out = r.stdout + r.stderr
            if r.returncode == 0:
                break
            time.sleep(0.5)
        check(r.returncode == 0, f"atomqctl {' '.join(step)}: {out}")
        return out

    ps = by_comp["participant"]
    p_name, p_id = ps["metadata"]["name"], flags(run_scripts(ps)[0])["--id"]
    pc = ps["spec"]["template"]["spec"]["containers"][0]
    cport, pport = port_number(pc, "client"), port_number(pc, "peer")
    peers = "|".join(f"{fqdn(ps, i)}:{pport}" for i in range(ps["spec"]["replicas"]))
    commit = (f"--coordinator={client_addresses(by_comp['coordinator'])}", "txn", "exec")
    try:
        atomqctl(f"--participant={client_addresses(ps)}", "queue", "create", "orders")
        out = atomqctl(*commit, f"--enqueue={p_id}:orders=hello")
        check("COMMITTED" in out, f"the transaction did not commit: {out}")
        mport = port_number(ps["spec"]["template"]["spec"]["containers"][0], "metrics")
        scraped = urllib.request.urlopen(f"http://{fqdn(ps, 1)}:{mport}/metrics", timeout=5).read()
        check(b"atomq_replica_role" in scraped, "a member's /metrics is not served on its metrics port")
        check_console(by_comp["coordinator"], p_id, tmp)
        # docs/operations.md: pod 2's disk is lost; it comes back empty as
        # member 4 (named in the members ConfigMap), which replaces member 3.
        victim = f"{p_name}-2"
        stop(victim)
        shutil.rmtree(pods[victim][2])
        os.makedirs(pods[victim][2])
        open(f"{members_dir[p_name]}/{victim}", "w").write("4\n")
        start(victim)
        out = atomqctl("cluster", "replace", f"--members={peers}", "--old=3", "--id=4",
                       f"--client={fqdn(ps, 2)}:{cport}", f"--peer={fqdn(ps, 2)}:{pport}")
        check("member 4 replaced member 3" in out, f"cluster replace: {out}")
        out = atomqctl(*commit, f"--enqueue={p_id}:orders=again")
        check("COMMITTED" in out, f"no commit after the replacement: {out}")
        out = atomqctl("cluster", "status", f"--members={peers}")
        check(re.search(r"^\s*4\b.*voter", out, re.M) is not None, f"member 4 is no voter: {out}")
    finally:
        for pod_name in pods:
            stop(pod_name)


def main():
    bin_dir = os.path.abspath(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    docs = load()
    check(bool(docs), "no manifests")
    if mode == "--live":
        # Again in a private mount namespace, where /etc/hosts can be replaced.
        return subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                               os.path.abspath(__file__), bin_dir, "--live-inside"]).returncode
    if mode == "--live-inside":
        with tempfile.TemporaryDirectory() as tmp:
            live(docs, bin_dir, tmp)
    else:
        check_all(docs, bin_dir)
    return report(f"kubernetes{' live' if mode else ''}")


if __name__ == "__main__":
    sys.exit(main())
