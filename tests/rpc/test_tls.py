"""mTLS on the coordinator's gRPC port: devices need a certificate from the configured CA."""

from __future__ import annotations

import datetime as dt
import ipaddress

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tsfl.pipeline.roles import LocalPipeline
from tsfl.rpc.server import start_coordinator_server
from tsfl.runtime.jobs import JobManager
from tsfl.runtime.service import ServiceConfig, server_credentials
from tsfl.sdk.grpc_transport import GrpcTransport, TLSConfig
from tsfl.storage import Store
from tsfl.v1 import admin_pb2, admin_pb2_grpc


def _cert(name: str, issuer_key, issuer_name, *, ca: bool = False, ip: str | None = None):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_name or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]),
            critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key, cert, pem, key_pem


@pytest.fixture
def pki(tmp_path):
    ca_key, ca_cert, ca_pem, _ = _cert("tsfl-ca", None, None, ca=True)
    _, _, srv_pem, srv_key = _cert("coordinator", ca_key, ca_cert.subject, ip="127.0.0.1")
    _, _, dev_pem, dev_key = _cert("device-1", ca_key, ca_cert.subject)
    files = {}
    for name, data in (("ca.pem", ca_pem), ("srv.pem", srv_pem), ("srv.key", srv_key)):
        (tmp_path / name).write_bytes(data)
        files[name] = str(tmp_path / name)
    return files, ca_pem, dev_pem, dev_key


async def test_mtls_admits_devices_with_a_certificate_and_refuses_others(pki, tmp_path):
    files, ca_pem, dev_pem, dev_key = pki
    creds = server_credentials(ServiceConfig(
        name="coordinator", kafka="-", database="-", tls_cert=files["srv.pem"],
        tls_key=files["srv.key"], tls_client_ca=files["ca.pem"]))
    store = await Store.open(f"sqlite:///{tmp_path / 't.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    jobs = JobManager(pipeline.coordinator, registration_timeout_s=30)
    server, port, *_ = await start_coordinator_server(pipeline.coordinator, jobs,
                                                     "127.0.0.1:0", credentials=creds)
    try:
        sub = await jobs.submit(yaml.safe_dump({"name": "tls", "rounds": 1,
                                                "clients": {"count": 2, "per_round": 2}}),
                                "enrol")
        address = f"127.0.0.1:{port}"
        ok = GrpcTransport(address, sub.job_id, "device-1",
                           tls=TLSConfig(ca=ca_pem, cert=dev_pem, key=dev_key))
        await ok.register("enrol")
        assert ok.session
        await ok.close()
        # issue #16: with --tls-client-ca, a device certificate used to be a full admin
        device_channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(
            ca_pem, dev_key, dev_pem))
        admin = admin_pb2_grpc.AdminServiceStub(device_channel)
        for call, request in ((admin.GetJob, admin_pb2.JobRef(job_id=sub.job_id)),
                              (admin.CancelJob, admin_pb2.JobRef(job_id=sub.job_id)),
                              (admin.SubmitJob, admin_pb2.SubmitJobRequest(
                                  spec_yaml="name: x\n"))):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await device_channel.close()
        assert (await store.get_job(sub.job_id))["status"] == "RUNNING"
        no_cert = GrpcTransport(address, sub.job_id, "device-2", tls=TLSConfig(ca=ca_pem))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await no_cert.register("enrol")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        await no_cert.close()
        plain = GrpcTransport(address, sub.job_id, "device-3")
        with pytest.raises(grpc.aio.AioRpcError):
            await plain.register("enrol")
        await plain.close()
    finally:
        await jobs.stop()
        await server.stop(None)
        await pipeline.stop()
        await store.close()


def test_bad_tls_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="both"):
        server_credentials(ServiceConfig(name="coordinator", kafka="-", database="-",
                                         tls_cert="x.pem"))
    with pytest.raises(ValueError, match="needs --tls-cert"):
        server_credentials(ServiceConfig(name="coordinator", kafka="-", database="-",
                                         tls_client_ca="ca.pem"))
    with pytest.raises(OSError):
        server_credentials(ServiceConfig(name="coordinator", kafka="-", database="-",
                                         tls_cert=str(tmp_path / "no.pem"),
                                         tls_key=str(tmp_path / "no.key")))


def test_plaintext_off_loopback_is_refused_unless_allowed():
    """Issue #16, finding 9: the admin port was plaintext unless TLS flags were given, so
    admin tokens and device sessions crossed the network in the clear."""
    def cfg(grpc_address: str, allow: bool = False) -> ServiceConfig:
        return ServiceConfig(name="coordinator", kafka="-", database="-",
                             grpc=grpc_address, allow_insecure=allow)

    for address in ("0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051", "coordinator:50051"):
        with pytest.raises(ValueError, match="refusing plaintext gRPC"):
            server_credentials(cfg(address))
        assert server_credentials(cfg(address, allow=True)) is None  # a private network
    for address in ("127.0.0.1:50051", "localhost:50051", "[::1]:50051"):
        assert server_credentials(cfg(address)) is None


@pytest.mark.parametrize("address,refused", [("10.1.2.3:50051", True),
                                             ("coordinator:50051", True),
                                             ("127.0.0.1:1", False)])
def test_the_admin_cli_never_sends_a_token_in_plaintext_off_loopback(address, refused,
                                                                     capsys):
    from tsfl.cli.main import main

    token = "tsfl-admin.0123456789abcdef." + "A" * 43
    args = ["job", "status", "some-job", "--coordinator", address, "--admin-token", token]
    if refused:
        with pytest.raises(SystemExit, match="refusing to send an admin token in plaintext"):
            main(args)
    else:  # nothing listens there: the call itself fails, after the check let it go
        assert main(args) != 0
    assert token not in capsys.readouterr().err
