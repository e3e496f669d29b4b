"""Release manifests: canonical bytes, Ed25519 signatures, the key file."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sde_spawner.checking import manifest

MANIFEST = {
    "format": manifest.FORMAT,
    "request": 7,
    "project": "diabetes-outcomes",
    "requester": "alice",
    "files": [{"path": "out/t1.csv", "size": 120, "sha256": "a" * 64, "description": "Ω"}],
    "reviews": [{"checker": "chris", "decisions": [{"path": "out/t1.csv", "decision": "approve"}]}],
}


@pytest.fixture
def key(tmp_path):
    return manifest.load_or_create_key(tmp_path)


def test_canonical_is_sorted_compact_ascii():
    text = manifest.canonical({"b": 1, "a": [1, {"d": "é", "c": None}]})
    assert text == '{"a":[1,{"c":null,"d":"\\u00e9"}],"b":1}'
    assert manifest.canonical(json.loads(text)) == text


def test_sign_and_verify(key):
    text = manifest.canonical(MANIFEST)
    sig = manifest.sign(key, text)
    pem = manifest.public_key_pem(key)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert manifest.verify(pem, text, sig)
    assert manifest.verify(key.public_key(), text.encode(), sig)
    assert sig == manifest.sign(key, text)  # Ed25519 is deterministic


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m["files"][0].__setitem__("sha256", "b" * 64),
        lambda m: m["files"].append({"path": "extra.csv", "size": 1, "sha256": "c" * 64}),
        lambda m: m.__setitem__("requester", "mallory"),
        lambda m: m["reviews"].pop(),
    ],
)
def test_a_tampered_manifest_does_not_verify(key, tamper):
    text = manifest.canonical(MANIFEST)
    sig = manifest.sign(key, text)
    changed = json.loads(text)
    tamper(changed)
    assert not manifest.verify(manifest.public_key_pem(key), manifest.canonical(changed), sig)


def test_other_key_reformatted_text_or_garbage_signature_do_not_verify(key):
    text = manifest.canonical(MANIFEST)
    sig = manifest.sign(key, text)
    other = manifest.public_key_pem(Ed25519PrivateKey.generate())
    pem = manifest.public_key_pem(key)
    assert not manifest.verify(other, text, sig)
    assert not manifest.verify(pem, json.dumps(MANIFEST, indent=1), sig)  # not canonical
    assert not manifest.verify(pem, text, "not base64!")
    assert not manifest.verify(pem, text, sig[:-4] + "AAA=")


def test_key_file_is_private_and_stable(tmp_path, key):
    path = tmp_path / manifest.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = manifest.load_or_create_key(tmp_path)
    assert manifest.public_key_pem(again) == manifest.public_key_pem(key)
    assert [p.name for p in tmp_path.iterdir()] == [manifest.KEY_FILE]
