"""`postel passwd` and `postel check` on the files TLS and AUTH use: hashes made by Postel are read
by libxcrypt and the other way round; broken files are reported with file and line; SIGHUP re-reads
them in a running daemon."""

import signal
import subprocess

import pytest

from helpers import POSTEL_BIN, write_config
from tlsutil import CA, libxcrypt_hash, libxcrypt_verify, openssl, self_signed


def postel(*args, stdin=""):
    return subprocess.run([str(POSTEL_BIN), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=30)


def test_passwd_writes_a_hash_libxcrypt_accepts(tmp_path):
    users = tmp_path / "users"
    config = write_config(tmp_path, auth_users=str(users))
    run = postel("passwd", "alice", "--config", config, stdin="s3cret pass\n")
    assert run.returncode == 0, run.stderr
    assert "password of alice set in" in run.stdout
    (line,) = users.read_text().splitlines()
    name, hashed = line.split(":", 1)
    assert name == "alice" and hashed.startswith("$y$"), line
    assert libxcrypt_verify("s3cret pass", hashed)
    assert not libxcrypt_verify("s3cret pas", hashed)
    assert users.stat().st_mode & 0o777 == 0o600

    run = postel("passwd", "alice", "--config", config, stdin="\n")
    assert run.returncode != 0 and "empty password" in run.stderr
    assert users.read_text() == line + "\n", "a refused change leaves the file alone"


def test_check_accepts_hashes_from_other_programs_and_names_bad_lines(tmp_path):
    users = tmp_path / "users"
    sha512 = openssl("passwd", "-6", "secret").strip()
    users.write_text(
        "# users of the submission port\n"
        f"alice:{libxcrypt_hash('secret', 'yescrypt')}\n"
        f"bob:{sha512}\n"
        f"carol:{libxcrypt_hash('secret', 'bcrypt')}\n"
    )
    config = write_config(tmp_path, auth_users=str(users))
    run = postel("check", "--config", config)
    assert run.returncode == 0, run.stderr
    with users.open("a") as f:
        f.write("dave:plaintext\n")
    run = postel("check", "--config", config)
    assert run.returncode != 0
    assert f"{users}:5: user 'dave': not a crypt(3) hash" in run.stderr


def test_check_reports_tls_file_problems(tmp_path):
    ca = CA(tmp_path / "ca")
    cert, key = ca.issue("postel.test")
    rsa_cert, rsa_key = ca.issue("rsa.postel.test", key_type="rsa")
    other_cert, other_key = self_signed(tmp_path)
    old_cert, old_key = ca.issue("old.postel.test", start="20200101000000Z", end="20200201000000Z")
    # An RSA key in the traditional (PKCS#1) form, as older tools write it.
    pkcs1 = tmp_path / "rsa-pkcs1.key"
    openssl("rsa", "-in", str(rsa_key), "-out", str(pkcs1), "-traditional")
    cases = [
        (cert, key, None),
        (rsa_cert, rsa_key, None),
        (rsa_cert, pkcs1, None),
        (cert, other_key, f"{other_key}: the key does not match the certificate in {cert}"),
        (tmp_path / "missing.crt", key, f"{tmp_path / 'missing.crt'}: cannot read"),
        (key, key, f"{key}: no CERTIFICATE block in the file"),
        (old_cert, old_key, f"{old_cert}: the certificate expired on 2020-02-01 00:00 UTC"),
    ]
    for n, (certificate, private_key, problem) in enumerate(cases):
        folder = tmp_path / f"case{n}"
        folder.mkdir()
        config = write_config(folder, tls_certificate=str(certificate), tls_key=str(private_key))
        run = postel("check", "--config", config)
        if problem is None:
            assert run.returncode == 0, (certificate, run.stderr)
            assert f'tls_certificate = "{certificate}"' in run.stdout
        else:
            assert run.returncode != 0 and problem in run.stderr, (certificate, private_key, run.stderr)
    config = write_config(tmp_path, tls_certificate=str(cert))
    run = postel("check", "--config", config)
    assert run.returncode != 0 and "tls_certificate and tls_key go together" in run.stderr


def test_sighup_rereads_and_a_bad_file_keeps_the_old_one(make_postel, tmp_path):
    users = tmp_path / "users"
    users.write_text(f"alice:{libxcrypt_hash('secret', 'sha512')}\n")
    cert, key = self_signed(tmp_path)
    server = make_postel(auth_users=str(users), tls_certificate=str(cert), tls_key=str(key))
    run = postel("passwd", "bob", "--config", server.config_path, stdin="other secret\n")
    assert run.returncode == 0, run.stderr
    assert f"the running daemon (pid {server.pid}) reads it again" in run.stdout
    server.wait_log(r"reload: 2 users may authenticate")
    users.write_text("broken line\n")
    key.write_text("not a key\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"reload: keeping the old auth_users: .*users:1: expected 'name:hash'")
    server.wait_log(r"reload: keeping the old TLS certificate and key: .*no private key")
    assert server.proc.poll() is None, "SIGHUP does not stop the daemon"
    conn = server.session()
    conn.expect("QUIT", 221)


@pytest.mark.parametrize("bad", ["two words", ""])
def test_passwd_refuses_bad_names(tmp_path, bad):
    config = write_config(tmp_path, auth_users=str(tmp_path / "users"))
    run = postel("passwd", bad, "--config", config, stdin="secret\n")
    assert run.returncode != 0
    assert not (tmp_path / "users").exists()


def test_check_refuses_smarthost_credentials_others_can_read(tmp_path):
    secret = tmp_path / "smarthost.secret"
    secret.write_text("relay@example.org:secret\n")
    secret.chmod(0o600)
    ca = CA(tmp_path / "ca")
    config = write_config(tmp_path, smarthost="smtp.example.org:587", smarthost_credentials=str(secret),
                          tls_ca_file=str(ca.cert))
    run = postel("check", "--config", config)
    assert run.returncode == 0, run.stderr
    assert 'smarthost_tls = "starttls"' in run.stdout and 'remote_tls = "opportunistic"' in run.stdout
    secret.chmod(0o644)
    run = postel("check", "--config", config)
    assert run.returncode != 0
    assert f"{secret}: others may read or write it (mode 644)" in run.stderr
    secret.chmod(0o600)
    config = write_config(tmp_path, tls_ca_file=str(secret))
    run = postel("check", "--config", config)
    assert run.returncode != 0 and f"{secret}: no CERTIFICATE block in the file" in run.stderr
