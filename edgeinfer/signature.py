"""Detached ed25519 signatures of bundles (``manifest.sig``), with the ``cryptography`` package.

What is signed: the exact bytes of ``manifest.json`` and of the labels file it names. The manifest
holds each artifact's size and sha256, and a signature is only checked together with those hashes
(``verify_hash`` cannot be turned off then), so one signature covers the whole bundle.

What it protects: a bundle altered after its author signed it (in transit, on a shared folder, by an
app update server) is refused. What it does not: whoever holds the private key signs anything;
a device must get the author's public key by another, trusted, path (e.g. shipped with the app).

    edgeinfer keygen KEY              # KEY (private, mode 0600) and KEY.pub
    edgeinfer sign BUNDLE --key KEY   # writes BUNDLE/manifest.sig
    edgeinfer run BUNDLE img.jpg --require-signature KEY.pub
"""
from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from .bundle import MANIFEST_NAME, contained
from .errors import EdgeInferError

SIGNATURE_NAME = "manifest.sig"
DOMAIN = b"edgeinfer bundle signature v1\n"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ModuleNotFoundError:
        raise EdgeInferError("bundle signatures need the cryptography package: pip install 'edgeinfer[sign]'") from None
    return serialization, ed25519


def signed_message(bundle_dir: Path, manifest: dict[str, Any]) -> bytes:
    """The bytes a signature covers: a domain tag, the manifest file, the labels file (if any)."""
    bundle_dir = Path(bundle_dir)
    parts = [DOMAIN, (bundle_dir / MANIFEST_NAME).read_bytes()]
    if manifest.get("labels"):
        labels = contained(bundle_dir, manifest["labels"], "labels")
        parts.append(labels.read_bytes() if labels.is_file() else b"")
    return b"\0".join(parts)


def generate_key(path: Path) -> tuple[Path, Path]:
    """A new ed25519 key pair: ``path`` (PEM private key, mode 0600) and ``path.pub`` (PEM public key)."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):
        if p.exists():
            raise EdgeInferError(f"{p} already exists; choose another name (keys are never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub


def _load(path: Path, private: bool):
    serialization, ed25519 = _crypto()
    kind = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except FileNotFoundError:
        raise EdgeInferError(f"{kind} key file not found: {path}") from None
    except (ValueError, TypeError, IsADirectoryError) as exc:
        raise EdgeInferError(f"{path} is not a PEM {kind} key ({exc}); make keys with `edgeinfer keygen`") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise EdgeInferError(f"{path} is not an ed25519 {kind} key; make one with `edgeinfer keygen`")
    return key


def sign_bundle(bundle_dir: Path, key_path: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.sig`` (base64 of the 64-byte signature) next to the manifest; returns its path."""
    key = _load(key_path, private=True)
    sig = base64.b64encode(key.sign(signed_message(bundle_dir, manifest))) + b"\n"
    out = Path(bundle_dir) / SIGNATURE_NAME
    tmp = out.with_name(f".{SIGNATURE_NAME}.tmp")
    tmp.write_bytes(sig)
    os.replace(tmp, out)
    return out


def verify_bundle_signature(bundle_dir: Path, public_key_path: Path, manifest: dict[str, Any]) -> None:
    """Refuse the bundle in one line unless ``manifest.sig`` is a valid signature by ``public_key_path``."""
    key = _load(public_key_path, private=False)
    from cryptography.exceptions import InvalidSignature
    sig_path = Path(bundle_dir) / SIGNATURE_NAME
    if not sig_path.is_file():
        raise EdgeInferError(f"bundle {bundle_dir} is not signed (no {SIGNATURE_NAME}) but a signature is required")
    try:
        key.verify(base64.b64decode(sig_path.read_bytes().strip(), validate=True), signed_message(bundle_dir, manifest))
    except (InvalidSignature, ValueError):
        raise EdgeInferError(f"bundle {bundle_dir}: {SIGNATURE_NAME} does not match {Path(public_key_path).name} "
                             "(the manifest or labels changed after signing, or another key signed it); refusing it") from None
