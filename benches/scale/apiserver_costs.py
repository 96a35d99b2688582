#!/usr/bin/env python3
"""The API server's CPU per request, by kind of request: what each request the operator makes
costs kube-apiserver and etcd (BENCHMARKS.md, "What one request costs the API server").

    tests/envtest/up DIR                     # a control plane of its own: nothing else on it
    KUBECONFIG=DIR/kubeconfig kubectl apply -f crds/servicenowconnection.yaml
    python3 benches/scale/apiserver_costs.py DIR [N]     # N of each request (default 1000)
    tests/envtest/down DIR

For each kind it sends N requests, 8 at a time, and prints the CPU seconds kube-apiserver and
etcd spent meanwhile (/proc/<pid>/stat, their pids from DIR/env) divided by N. The client's own
CPU is not counted. Not part of `make test`: figures to read, never asserted.
"""

import concurrent.futures
import json
import os
import sys
import threading
import time

import requests
import urllib3

urllib3.disable_warnings()  # the control plane's own throwaway CA, on loopback

DIR = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
ENV = dict(line.split("=", 1) for line in open(f"{DIR}/env").read().splitlines() if "=" in line and not line.startswith("export"))
URL = ENV["ENVTEST_APISERVER_URL"]
APISERVER, ETCD = int(ENV["ENVTEST_APISERVER_PID"]), int(ENV["ENVTEST_ETCD_PID"])
CERT = (f"{DIR}/pki/admin.crt", f"{DIR}/pki/admin.key")
NS = "apiserver-costs"
CONNECTIONS = f"{URL}/apis/neoagent.io/v1alpha1/namespaces/{NS}/servicenowconnections"
SECRETS = f"{URL}/api/v1/namespaces/{NS}/secrets"
local = threading.local()


def send(method, url, **kwargs):
    if not hasattr(local, "session"):
        local.session = requests.Session()
        local.session.cert = CERT
    answer = local.session.request(method, url, verify=False, **kwargs)
    if answer.status_code >= 300:
        raise SystemExit(f"{method} {url}: {answer.status_code} {answer.text[:300]}")
    return answer


def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind, request):
    before = cpu(APISERVER), cpu(ETCD)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(request, range(N)))
    after = cpu(APISERVER), cpu(ETCD)
    print(f"{kind:58s} kube-apiserver {1000 * (after[0] - before[0]) / N:5.2f} ms   etcd {1000 * (after[1] - before[1]) / N:5.2f} ms", flush=True)


def name(i):
    return f"c{i:05d}"


def status(i, generation):
    """A READY_TO_SYNC status as the operator writes it (its conditions' messages shortened)."""
    at = "2026-12-05T01:%02d:%02dZ" % (generation % 60, i % 60)
    conditions = [
        dict(type=kind, status="True", reason=f"Ok{generation}", message=f"in place ({generation})", lastTransitionTime=at, observedGeneration=1)
        for kind in ["Ready", "Authorized", "IdentityResolved", "WebhookProvisioned"]
    ]
    return dict(
        observedGeneration=1, syncState="READY_TO_SYNC", conditions=conditions, credentialsHash="sha256:" + "ab" * 16,
        identity=dict(userName="neo.agent", sysId="6816f79cc0a8016401c5a33be04be441", displayName="Neo Agent"),
        token=dict(accessTokenExpiresAt=at, lastRefreshTime=at, refreshTokenExpiresAt=at),
        webhook=dict(businessRuleSysId="a" * 32, callbackPropertySysId="b" * 32),
    )


def merge(url, body):
    return send("PATCH", url, headers={"Content-Type": "application/merge-patch+json"}, data=json.dumps(body))


def apply_status(i, generation):
    body = dict(apiVersion="neoagent.io/v1alpha1", kind="ServiceNowConnection", metadata=dict(name=name(i)), status=status(i, generation))
    return send("PATCH", f"{CONNECTIONS}/{name(i)}/status?fieldManager=servicenow-operator&force=true",
                headers={"Content-Type": "application/apply-patch+yaml"}, data=json.dumps(body))


def event(i):
    return send("POST", f"{URL}/apis/events.k8s.io/v1/namespaces/{NS}/events", json=dict(
        metadata=dict(name=f"{name(i)}.{time.time_ns():x}"), eventTime="2026-12-05T01:00:00.000000Z",
        reportingController="servicenow-operator", reportingInstance="servicenow-operator-0", action="WebhookProvisioned",
        reason="Provisioned", note="the Business Rule and its callback property are in place", type="Normal",
        regarding=dict(apiVersion="neoagent.io/v1alpha1", kind="ServiceNowConnection", namespace=NS, name=name(i))))


send("POST", f"{URL}/api/v1/namespaces", json=dict(metadata=dict(name=NS)))
print(f"{N} requests of each kind, 8 at a time, on {URL}")
measure("POST a connection", lambda i: send("POST", CONNECTIONS, json=dict(
    apiVersion="neoagent.io/v1alpha1", kind="ServiceNowConnection", metadata=dict(name=name(i)),
    spec=dict(instanceUrl=f"https://{name(i)}.service-now.com", credentialsSecretRef=dict(name=f"{name(i)}-oauth"), resyncInterval="1h"))))
measure("POST a Secret", lambda i: send("POST", SECRETS, json=dict(metadata=dict(name=f"{name(i)}-oauth"), stringData=dict(clientId="x" * 32, clientSecret="y" * 32))))
measure("GET a Secret", lambda i: send("GET", f"{SECRETS}/{name(i)}-oauth"))
measure("GET a Secret, resourceVersion=0 (the watch cache)", lambda i: send("GET", f"{SECRETS}/{name(i)}-oauth?resourceVersion=0"))
measure("POST an Event", event)
measure("PATCH a finalizer (merge), status empty", lambda i: merge(f"{CONNECTIONS}/{name(i)}", dict(metadata=dict(finalizers=["neoagent.io/cleanup"]))))
measure("status: server-side apply, first", lambda i: apply_status(i, 1))
measure("status: server-side apply, changed", lambda i: apply_status(i, 2))
measure("status: server-side apply, unchanged", lambda i: apply_status(i, 2))
measure("status: merge patch, changed", lambda i: merge(f"{CONNECTIONS}/{name(i)}/status", dict(status=status(i, 3))))
measure("status: merge patch, unchanged", lambda i: merge(f"{CONNECTIONS}/{name(i)}/status", dict(status=status(i, 3))))
measure("PATCH a finalizer (merge), status full", lambda i: merge(f"{CONNECTIONS}/{name(i)}", dict(metadata=dict(finalizers=["neoagent.io/other"]))))
measure("GET a connection", lambda i: send("GET", f"{CONNECTIONS}/{name(i)}"))
