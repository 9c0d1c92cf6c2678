# Run by the identity Job (charts/precinct/templates/identity-job.yaml) in
# the operator image: mint the NATS identity once and store it in a Secret.
import base64, io, json, os, ssl, sys, tarfile, tempfile, urllib.error, urllib.request
from pathlib import Path

from precinct.natsauth import Identity

SA = Path(os.environ.get("PRECINCT_SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount"))
namespace = (SA / "namespace").read_text().strip()
name = os.environ["SECRET_NAME"]
host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
api = os.environ.get("PRECINCT_API_URL", f"https://{host}:{port}")   # override: tests
base = f"{api}/api/v1/namespaces/{namespace}/secrets"
tls = ssl.create_default_context(cafile=str(SA / "ca.crt")) if api.startswith("https") else None


def call(method, url, body=None):
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Authorization", "Bearer " + (SA / "token").read_text().strip())
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, context=tls, timeout=30) as response:
        return json.load(response)


try:
    call("GET", f"{base}/{name}")
    print(f"secret {namespace}/{name} exists: keeping the NATS identity")
    sys.exit(0)
except urllib.error.HTTPError as exc:
    if exc.code != 404:
        raise

state = Path(tempfile.mkdtemp(prefix="precinct-")) / "state"
identity = Identity(state, port=int(os.environ.get("NATS_PORT", "4222")))
identity.prepare([])
config = identity.server_config()          # the preloads NATS needs: system, core, platform
operator_jwt = (state / "operator.jwt").read_text().strip()
system_account = identity.account_key("system")
lines = [f"operator: {json.dumps(operator_jwt)}", f"system_account: {json.dumps(system_account)}",
         "resolver_preload: {"]
lines += [f"  {key}: {json.dumps(token)}" for key, token in sorted(config.preloaded.items())]
lines += ["}"]

archive = io.BytesIO()
with tarfile.open(fileobj=archive, mode="w:gz") as tar:
    for child in sorted(state.iterdir()):
        if child.name not in ("jwt", "nats-server.conf", "nats-server.log"):
            tar.add(child, arcname=child.name)

data = {
    "state.tar.gz": archive.getvalue(),
    "identity.conf": ("\n".join(lines) + "\n").encode(),
    "operator.jwt": operator_jwt.encode(),
    "system-account": system_account.encode(),
    "platform.creds": identity.platform_creds().read_bytes(),
    "core.creds": identity.core_creds().read_bytes(),
}
secret = {
    "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
    "metadata": {"name": name, "namespace": namespace,
                 "labels": {"app.kubernetes.io/part-of": "precinct", "app.kubernetes.io/component": "nats-identity"}},
    "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
}
try:
    call("POST", base, secret)
    print(f"secret {namespace}/{name} created: system account {system_account[:8]}..., "
          f"operator {json.loads(base64.urlsafe_b64decode(operator_jwt.split('.')[1] + '==='))['sub'][:8]}...")
except urllib.error.HTTPError as exc:
    if exc.code != 409:          # created meanwhile by a concurrent run: keep that one
        raise
    print(f"secret {namespace}/{name} appeared meanwhile: keeping it")
