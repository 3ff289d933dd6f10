"""TLS to a real Mosquitto with certificates made by the test: the right CA connects (the service,
its --check-config and scripts/request.py, each with a client certificate); a wrong
CA, an expired certificate and a wrong host name are each refused with one clear log line
(retried with backoff, no traceback); the insecure switch works and says so."""

import datetime
import subprocess
import sys

import pytest
from conftest import ROOT, Broker, Service, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory, name):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_leaf(directory, name, ca_key, ca_cert, dns=("localhost",), before=NOW - DAY, after=NOW + 30 * DAY):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(before).not_valid_after(after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca = make_ca(d, "test-ca")
    _, _, other_ca = make_ca(d, "other-ca")
    server = make_leaf(d, "server", ca_key, ca_cert)
    expired = make_leaf(d, "expired", ca_key, ca_cert, before=NOW - 30 * DAY, after=NOW - DAY)
    client = make_leaf(d, "service-client", ca_key, ca_cert, dns=("service",))
    return {"ca": ca, "other_ca": other_ca, "server": server, "expired": expired, "client": client}


def tls_broker(tmp_path, pki, server="server", require_client_cert=False):
    cert, key = pki[server]
    extra = [f"cafile {pki['ca']}", f"certfile {cert}", f"keyfile {key}"]
    if require_client_cert:
        extra += ["require_certificate true"]
    broker = Broker(tmp_path, extra=tuple(extra))
    broker.start()
    return broker


def tls_service(broker, tmp_path, ca, host="localhost", **env):
    return Service(broker, tmp_path, MQTT_TLS="true", MQTT_TLS_CA_FILE=str(ca), MQTT_BROKER_HOST=host, **env)


def test_the_right_ca_connects_and_readings_flow(tmp_path, pki):
    broker = tls_broker(tmp_path, pki, require_client_cert=True)
    cert, key = pki["client"]
    service = tls_service(broker, tmp_path, pki["ca"], MQTT_TLS_CERT_FILE=str(cert), MQTT_TLS_KEY_FILE=str(key))
    try:
        service.start().wait_ready()
        assert "over TLS" in service.log()
        check = subprocess.run([sys.executable, "system.py", "--check-config"], cwd=ROOT, env=service.env,
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "over TLS" in check.stdout, check.stdout + check.stderr
        # an app asking as request.py does, from the same variables: CA, client certificate, host
        asked = subprocess.run([sys.executable, "scripts/request.py", "devices", "--check"], cwd=ROOT, env=service.env,
                               capture_output=True, text=True, timeout=60)
        assert asked.returncode == 0 and "0 devices" in asked.stdout, asked.stdout + asked.stderr
    finally:
        service.stop_quietly()
        broker.stop()


@pytest.mark.parametrize("case, expected", [
    ("wrong CA", "is it signed by the CA in mqtt.tls_ca_file"),
    ("expired", "certificate has expired; renew the broker's certificate"),
    ("wrong host", "mqtt.host (127.0.0.1) must be a name the certificate is for"),
])
def test_a_certificate_that_cannot_be_trusted_is_refused_with_a_clear_reason(tmp_path, pki, case, expected):
    broker = tls_broker(tmp_path, pki, server="expired" if case == "expired" else "server")
    ca = pki["other_ca"] if case == "wrong CA" else pki["ca"]
    service = tls_service(broker, tmp_path, ca, host="127.0.0.1" if case == "wrong host" else "localhost",
                          LOG_LEVEL="DEBUG")
    try:
        service.start()
        wait_until(lambda: expected in service.log(), what=f"the {case} log line")
        # It keeps retrying with backoff, saying so once (at WARNING), with no traceback.
        wait_until(lambda: service.log().count("connection attempt failed again: TLS") >= 2, what="retries")
        assert service.log().count("WARNING actors.mqtt.session: cannot connect") == 1
        assert service.proc.poll() is None and "Traceback" not in service.log()
        assert "taking readings and requests" not in service.log()
    finally:
        service.stop_quietly()
        broker.stop()


def test_the_insecure_switch_connects_anyway_and_warns(tmp_path, pki):
    broker = tls_broker(tmp_path, pki)
    settings = tmp_path / "dev.toml"
    settings.write_text("[mqtt]\ntls_insecure = true\n")
    service = tls_service(broker, tmp_path, pki["other_ca"], host="127.0.0.1")
    try:
        service.start("--config", str(settings)).wait_ready()
        assert "WARNING actors.runtime.tls: TLS certificate checks are OFF" in service.log()
    finally:
        service.stop_quietly()
        broker.stop()
