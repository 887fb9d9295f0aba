"""deploy/nginx/relay.conf: accepted by `nginx -t`, TLS 1.2+, websockets, no client addresses."""

from __future__ import annotations

import datetime
import pathlib
import re
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CONF = ROOT / "deploy" / "nginx" / "relay.conf"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx",) if pathlib.Path(p).exists()), None)

pytestmark = pytest.mark.timeout(60)


def _self_signed(directory: pathlib.Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("relay.example.com")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.mark.skipif(NGINX is None, reason="nginx absent (.ci/run installs it)")
def test_nginx_accepts_the_relay_config(tmp_path: pathlib.Path) -> None:
    tls, logs = tmp_path / "tls", tmp_path / "logs"
    tls.mkdir()
    logs.mkdir()
    _self_signed(tls)
    conf = (CONF.read_text()
            .replace("/etc/ssl/compliance-relay/", f"{tls}/")
            .replace("/var/log/nginx/", f"{logs}/"))
    (tmp_path / "relay.conf").write_text(conf)
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp_path}/{kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {logs}/main.error.log;\n"
        f"events {{}}\nhttp {{\n    access_log off;\n{temp_paths}\n"
        f"    include {tmp_path}/relay.conf;\n}}\n")
    result = subprocess.run([str(NGINX), "-t", "-p", str(tmp_path), "-c",
                             str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr
    assert "[warn]" not in result.stderr


def _directives(name: str) -> list[str]:
    text = re.sub(r"#.*", "", CONF.read_text())
    return [" ".join(m.split()) for m in re.findall(rf"\b{name}\s+([^;]*);", text)]


def test_only_tls_1_2_and_1_3() -> None:
    assert _directives("ssl_protocols") == ["TLSv1.2 TLSv1.3"]


def test_hsts_is_sent_on_every_response() -> None:
    hsts = re.findall(r'add_header\s+Strict-Transport-Security\s+"([^"]*)"\s+(\w+);',
                      CONF.read_text())
    assert hsts == [("max-age=63072000; includeSubDomains", "always")]


def test_log_format_holds_no_client_data() -> None:
    text = re.sub(r"#.*", "", CONF.read_text())
    log_format = re.search(r"log_format\s+(\S+)\s+([^;]*);", text)
    assert log_format is not None
    for forbidden in ("$remote_addr", "$binary_remote_addr", "$http_x_forwarded_for",
                      "$proxy_add_x_forwarded_for", "$http_user_agent", "$http_referer",
                      "$request ", "$request_uri", "$args", "$query_string", "$remote_user"):
        assert forbidden not in log_format.group(2) + " "
    # Every access_log uses that format, so nginx's "combined" (with IPs) is never used.
    assert {d.split()[-1] for d in _directives("access_log")} == {log_format.group(1)}


def test_websocket_routes_are_upgraded() -> None:
    location = re.search(r"location ~ (\S+) \{(.*?)\}", CONF.read_text(), re.S)
    assert location is not None
    pattern, body = re.compile(location.group(1)), location.group(2)
    for path in ("/v1/visitor", "/v1/agent", "/v1/vault/link"):
        assert pattern.search(path)
    assert not pattern.search("/v1/accounts")
    assert "proxy_set_header Upgrade    $http_upgrade" in body
    assert "proxy_http_version 1.1" in body
