"""Device identities: certificates from a trusted authority, domain-separated signatures.
Adversary: the server operator, who routes messages and would substitute keys."""

from __future__ import annotations

import os
import stat

import pytest

from tsfl.identity import (
    DeviceIdentity,
    IdentityAuthority,
    IdentityCertificate,
    IdentityError,
    read_authority_public,
    verify,
    verify_certificate,
)


def test_certificate_and_signature_verify():
    ca = IdentityAuthority.generate()
    dev = DeviceIdentity.enrol("silo-1", ca)
    cert = IdentityCertificate.from_wire(dev.certificate.to_wire())
    verify_certificate(cert, [ca.public_key], "silo-1")
    verify(cert, b"secagg-advertise", b"keys", dev.sign(b"secagg-advertise", b"keys"))


def test_server_cannot_substitute_a_key():
    """The server makes its own key and certifies it with its own authority, or reuses a
    real certificate with another key: devices trusting only the real authority refuse."""
    ca, rogue = IdentityAuthority.generate(), IdentityAuthority.generate()
    forged = DeviceIdentity.enrol("silo-1", rogue)
    with pytest.raises(IdentityError, match="untrusted"):
        verify_certificate(forged.certificate, [ca.public_key])
    real = DeviceIdentity.enrol("silo-1", ca).certificate
    swapped = IdentityCertificate(real.device_id, forged.certificate.public_key, real.authority,
                                  real.signature)
    with pytest.raises(IdentityError, match="does not verify"):
        verify_certificate(swapped, [ca.public_key])
    relabelled = IdentityCertificate("silo-2", real.public_key, real.authority, real.signature)
    with pytest.raises(IdentityError):
        verify_certificate(relabelled, [ca.public_key])
    with pytest.raises(IdentityError, match="not 'silo-2'"):
        verify_certificate(real, [ca.public_key], "silo-2")


def test_signatures_are_bound_to_purpose_and_message():
    ca = IdentityAuthority.generate()
    dev = DeviceIdentity.enrol("d", ca)
    sig = dev.sign(b"he-section", b"m")
    with pytest.raises(IdentityError):
        verify(dev.certificate, b"secagg-consistency", b"m", sig)
    with pytest.raises(IdentityError):
        verify(dev.certificate, b"he-section", b"m2", sig)
    other = DeviceIdentity.enrol("e", ca)
    with pytest.raises(IdentityError):
        verify(other.certificate, b"he-section", b"m", sig)


@pytest.mark.parametrize("bad", [None, {}, {"id": "x", "pk": b"1", "ca": b"2", "sig": b"3"},
                                 {"id": "x" * 500, "pk": bytes(32), "ca": bytes(32),
                                  "sig": bytes(64)}])
def test_malformed_certificates_are_refused(bad):
    with pytest.raises(IdentityError):
        IdentityCertificate.from_wire(bad)


def test_files_round_trip_with_owner_only_mode(tmp_path):
    ca = IdentityAuthority.generate()
    ca.save(tmp_path / "ca.key")
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600
    assert IdentityAuthority.load(tmp_path / "ca.key").public_key == ca.public_key
    assert read_authority_public(tmp_path / "ca.key.pub") == ca.public_key
    assert read_authority_public(ca.public_key.hex()) == ca.public_key
    dev = DeviceIdentity.enrol("d", ca)
    dev.save(tmp_path / "d.id")
    assert stat.S_IMODE(os.stat(tmp_path / "d.id").st_mode) == 0o600
    back = DeviceIdentity.load(tmp_path / "d.id")
    assert back.certificate == dev.certificate
    verify(back.certificate, b"p", b"m", back.sign(b"p", b"m"))
    (tmp_path / "junk").write_bytes(b"\x01" * 10)
    with pytest.raises(IdentityError):
        DeviceIdentity.load(tmp_path / "junk")
