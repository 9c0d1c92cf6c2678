"""Ed25519 keys for publishers and for the index's own TUF roles.

On disk a key pair is two files:

- `NAME.key`: the private key, PKCS#8 PEM, mode 0600 (optionally encrypted
  with the passphrase in $PRECINCT_KEY_PASSPHRASE);
- `NAME.pub`: JSON `{"keyid": ..., "key": {...}}`, the securesystemslib/TUF
  public key form, safe to publish. The keyid is TUF's: the sha256 of the
  canonical public key.

A detached bundle signature (`precinct plugin sign`) is `BUNDLE.sig`, JSON
`{"keyid", "sig", "id", "version", "sha256"}`: the publisher's Ed25519
signature over `precinct-bundle-v1\\n<id>\\n<version>\\n<sha256>`, so a
signature cannot be moved to another plugin or version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key, Signature, SSlibKey

from ..settings import MarketSettings
from ..wire import environment as env
from .errors import TrustError

PASSPHRASE_ENV = env.KEY_PASSPHRASE


def _passphrase() -> bytes | None:
    value = MarketSettings.load().key_passphrase
    return value.get_secret_value().encode() if value and value.get_secret_value() else None


def generate(private_path: Path) -> tuple[CryptoSigner, Path]:
    """Write a new key pair; refuse to overwrite an existing private key."""
    if private_path.suffix != ".key":
        private_path = private_path.with_name(private_path.name + ".key")
    if private_path.exists():
        raise TrustError(f"{private_path} exists; refusing to overwrite a private key", "keys")
    key = Ed25519PrivateKey.generate()
    password = _passphrase()
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    signer = CryptoSigner(key)
    public_path = private_path.with_suffix(".pub")
    write_public(signer.public_key, public_path)
    return signer, public_path


def write_public(key: Key, path: Path) -> None:
    path.write_text(json.dumps({"keyid": key.keyid, "key": key.to_dict()}, indent=1, sort_keys=True) + "\n")


def load_signer(private_path: Path) -> CryptoSigner:
    try:
        pem = private_path.read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read key {private_path}: {exc.strerror or exc}", "keys") from None
    try:
        key = serialization.load_pem_private_key(pem, password=_passphrase())
    except (ValueError, TypeError) as exc:
        raise TrustError(f"{private_path} is not a usable private key ({exc}); encrypted keys read "
                         f"their passphrase from ${PASSPHRASE_ENV}", "keys") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{private_path}: expected an Ed25519 key, got {type(key).__name__}", "keys")
    return CryptoSigner(key)


def load_public(path: Path) -> Key:
    """A `.pub` file (or a `.key`, whose public half is derived)."""
    if path.suffix == ".key":
        return load_signer(path).public_key
    try:
        data = json.loads(path.read_text())
        key = SSlibKey.from_dict(data["keyid"], dict(data["key"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"{path} is not a Precinct public key file ({exc})", "keys") from None
    if key.keytype != "ed25519":
        raise TrustError(f"{path}: expected an ed25519 key, got {key.keytype}", "keys")
    return key


def _payload(plugin_id: str, version: str, sha256: str) -> bytes:
    return f"precinct-bundle-v1\n{plugin_id}\n{version}\n{sha256}".encode()


def sign_bundle(signer: CryptoSigner, plugin_id: str, version: str, sha256: str) -> dict:
    sig = signer.sign(_payload(plugin_id, version, sha256))
    return {"keyid": sig.keyid, "sig": sig.signature, "id": plugin_id, "version": version, "sha256": sha256}


def verify_bundle_signature(doc: dict, trusted: list[Key], plugin_id: str, version: str, sha256: str) -> Key:
    """The trusted key that signed this exact bundle, or TrustError saying why not."""
    try:
        keyid, sig = str(doc["keyid"]), str(doc["sig"])
    except (KeyError, TypeError):
        raise TrustError("signature file is malformed (needs keyid and sig)") from None
    if (doc.get("id"), doc.get("version"), doc.get("sha256")) != (plugin_id, version, sha256):
        raise TrustError(f"the signature is for {doc.get('id')} {doc.get('version')} sha256 {doc.get('sha256')}, "
                         f"not this bundle ({plugin_id} {version} sha256 {sha256})")
    key = next((k for k in trusted if k.keyid == keyid), None)
    if key is None:
        raise TrustError(f"signed by key {keyid[:16]}..., which is not a trusted publisher key "
                         f"(trusted: {', '.join(k.keyid[:16] + '...' for k in trusted) or 'none'})")
    try:
        key.verify_signature(Signature(keyid, sig), _payload(plugin_id, version, sha256))
    except Exception as exc:  # securesystemslib raises its own hierarchy
        raise TrustError(f"the publisher signature by {keyid[:16]}... does not verify: {exc}") from None
    return key
